// SPDX-License-Identifier: GPL-2.0
/*
 * dmatest_sva: a minimal SVA driver for the VMM's dma-test device
 * (1234:5a5a). It enables IOPF and SVA on the device and gives user space
 * /dev/dmatest_sva to bind its address space (a PASID) and make the device
 * DMA to process virtual addresses. Pages the process never touched fault
 * on the device side; PRI page requests are resolved by an IOPF handler
 * that faults the pages in with handle_mm_fault().
 *
 * ioctls (one bond per open file, unbound on close):
 *   DMATEST_SVA_BIND  -> struct dmatest_sva_bind
 *   DMATEST_SVA_DMA   <-> struct dmatest_sva_dma
 *
 * Binding uses iommu_sva_bind_device(). Stable kernels that carry the
 * backport of upstream 72f98ef9a4be ("iommu: disable SVA when CONFIG_X86
 * is set"; Debian's 6.12.95 does) make it fail with -EOPNOTSUPP on x86.
 * This test-only driver then does what the core would have done itself:
 * a global PASID, the IOMMU driver's SVA domain for current->mm, attached
 * to the device PASID, with an IOPF handler equivalent to the core's
 * (it runs on the IOMMU's IOPF workqueue). The reason for the upstream
 * disable (kernel page-table frees not flushing the IOTLB) is irrelevant
 * to a throwaway test guest.
 */
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/iommu.h>
#include <linux/ioctl.h>
#include <linux/jiffies.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-ats.h>
#include <linux/sched.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>

#define DRV "dmatest_sva"

#define REG_ID		0x00
#define REG_ADDR	0x08
#define REG_LEN		0x10
#define REG_PATTERN	0x14
#define REG_PASID	0x18
#define REG_COMMAND	0x1c
#define REG_STATUS	0x20
#define REG_RESULT	0x24
#define REG_FAULTS	0x28
#define REG_DONE	0x2c
#define REG_PAGE_REQS	0x30
#define REG_PAGE_RESPS	0x34

#define DEV_ID		0x444d4154
#define ST_PENDING	3
#define PASID_VALID	BIT(31)
#define MAX_LEN		(1u << 20)

struct dmatest_sva_bind {
	__u32 pasid;		/* out */
	__u32 flags;		/* out: DMATEST_SVA_BIND_DRIVER */
};
#define DMATEST_SVA_BIND_DRIVER	1	/* bound by this driver, not the core */

struct dmatest_sva_dma {
	__u64 addr;
	__u32 len;
	__u32 pattern;
	__u32 op;		/* 1 write, 2 read */
	__u32 status;		/* out: STATUS after completion */
	__u32 result;		/* out: RESULT */
	__u32 page_requests;	/* out */
	__u32 page_responses;	/* out */
	__u32 faults;		/* out */
	__u32 done;		/* out */
	__u32 wait_ms;		/* out: time spent polling */
};

#define DMATEST_SVA_BIND	_IOR('D', 1, struct dmatest_sva_bind)
#define DMATEST_SVA_DMA		_IOWR('D', 2, struct dmatest_sva_dma)

struct dmatest {
	struct pci_dev *pdev;
	void __iomem *regs;
	struct mutex lock;	/* one command at a time */
	int iopf_err, sva_err;	/* results of the feature enables */
	struct miscdevice misc;
};

struct dmatest_file {
	struct dmatest *dt;
	struct mutex lock;		/* protects the bond */
	bool bound;
	u32 pasid;
	struct iommu_sva *handle;	/* core bond */
	struct iommu_domain *domain;	/* driver bond */
	struct iommu_attach_handle attach;
};

/* The single device (the misc node is fixed-name). */
static struct dmatest *the_dev;
static DEFINE_MUTEX(the_dev_lock);

/* --- driver-side SVA bond (when iommu_sva_bind_device() is disabled) --- */

/* Resolves one page request against @mm, as the core's SVA handler does. */
static enum iommu_page_response_code dt_fault_one(struct iommu_fault *fault,
						  struct mm_struct *mm)
{
	struct iommu_fault_page_request *prm = &fault->prm;
	enum iommu_page_response_code status = IOMMU_PAGE_RESP_INVALID;
	unsigned int access = 0, flags = FAULT_FLAG_REMOTE;
	struct vm_area_struct *vma;
	vm_fault_t ret;

	if (!(prm->flags & IOMMU_FAULT_PAGE_REQUEST_PASID_VALID) ||
	    !mmget_not_zero(mm))
		goto out;
	mmap_read_lock(mm);
	vma = vma_lookup(mm, prm->addr);
	if (!vma)
		goto unlock;
	if (prm->perm & IOMMU_FAULT_PERM_READ)
		access |= VM_READ;
	if (prm->perm & IOMMU_FAULT_PERM_WRITE) {
		access |= VM_WRITE;
		flags |= FAULT_FLAG_WRITE;
	}
	if (prm->perm & IOMMU_FAULT_PERM_EXEC) {
		access |= VM_EXEC;
		flags |= FAULT_FLAG_INSTRUCTION;
	}
	if (!(prm->perm & IOMMU_FAULT_PERM_PRIV))
		flags |= FAULT_FLAG_USER;
	if (access & ~vma->vm_flags)
		goto unlock;
	ret = handle_mm_fault(vma, prm->addr, flags, NULL);
	status = ret & VM_FAULT_ERROR ? IOMMU_PAGE_RESP_INVALID :
					IOMMU_PAGE_RESP_SUCCESS;
unlock:
	mmap_read_unlock(mm);
	mmput(mm);
out:
	pr_info(DRV ": iopf pasid %u addr %#llx perm %#x grp %u -> %s\n",
		prm->pasid, prm->addr, prm->perm, prm->grpid,
		status == IOMMU_PAGE_RESP_SUCCESS ? "success" : "invalid");
	return status;
}

static void dt_iopf_work(struct work_struct *work)
{
	struct iopf_group *group = container_of(work, struct iopf_group, work);
	struct mm_struct *mm = group->attach_handle->domain->mm;
	enum iommu_page_response_code status = IOMMU_PAGE_RESP_SUCCESS;
	struct iopf_fault *iopf;

	list_for_each_entry(iopf, &group->faults, list) {
		if (status != IOMMU_PAGE_RESP_SUCCESS)
			break;
		status = dt_fault_one(&iopf->fault, mm);
	}
	iopf_group_response(group, status);
	iopf_free_group(group);
}

/* Runs the group on the IOMMU's IOPF workqueue, which PASID teardown drains. */
static int dt_iopf_handler(struct iopf_group *group)
{
	INIT_WORK(&group->work, dt_iopf_work);
	if (!queue_work(group->fault_param->queue->wq, &group->work))
		return -EBUSY;
	return 0;
}

static int dt_driver_bind(struct dmatest_file *f, struct device *dev,
			  struct mm_struct *mm)
{
	const struct iommu_ops *ops;
	struct iommu_domain *domain;
	ioasid_t pasid;
	int ret;

	if (!dev->iommu || !dev->iommu->iommu_dev)
		return -ENODEV;
	ops = dev->iommu->iommu_dev->ops;
	if (!ops->domain_alloc_sva)
		return -EOPNOTSUPP;
	pasid = iommu_alloc_global_pasid(dev);
	if (pasid == IOMMU_PASID_INVALID)
		return -ENOSPC;
	domain = ops->domain_alloc_sva(dev, mm);
	if (IS_ERR_OR_NULL(domain)) {
		ret = domain ? PTR_ERR(domain) : -ENOMEM;
		pr_info(DRV ": domain_alloc_sva failed: %d\n", ret);
		goto err_pasid;
	}
	/* As iommu_sva_domain_alloc() does; iommu_domain_free() drops mm. */
	domain->type = IOMMU_DOMAIN_SVA;
	mmgrab(mm);
	domain->mm = mm;
	domain->owner = ops;
	domain->iopf_handler = dt_iopf_handler;
	ret = iommu_attach_device_pasid(domain, dev, pasid, &f->attach);
	if (ret) {
		pr_info(DRV ": iommu_attach_device_pasid(%u) failed: %d\n",
			pasid, ret);
		goto err_domain;
	}
	f->domain = domain;
	f->pasid = pasid;
	return 0;

err_domain:
	iommu_domain_free(domain);
err_pasid:
	iommu_free_global_pasid(pasid);
	return ret;
}

static void dt_driver_unbind(struct dmatest_file *f)
{
	struct device *dev = &f->dt->pdev->dev;

	iommu_detach_device_pasid(f->domain, dev, f->pasid);
	iommu_domain_free(f->domain);
	iommu_free_global_pasid(f->pasid);
	f->domain = NULL;
}

/* --- file operations --- */

static int dt_open(struct inode *inode, struct file *file)
{
	struct dmatest_file *f;

	f = kzalloc(sizeof(*f), GFP_KERNEL);
	if (!f)
		return -ENOMEM;
	mutex_lock(&the_dev_lock);
	f->dt = the_dev;
	mutex_unlock(&the_dev_lock);
	if (!f->dt) {
		kfree(f);
		return -ENODEV;
	}
	mutex_init(&f->lock);
	file->private_data = f;
	return 0;
}

static int dt_release(struct inode *inode, struct file *file)
{
	struct dmatest_file *f = file->private_data;

	if (f->handle)
		iommu_sva_unbind_device(f->handle);
	else if (f->domain)
		dt_driver_unbind(f);
	if (f->bound)
		pr_info(DRV ": unbound pasid %u\n", f->pasid);
	kfree(f);
	return 0;
}

static long dt_bind(struct dmatest_file *f, void __user *uarg)
{
	struct device *dev = &f->dt->pdev->dev;
	struct dmatest_sva_bind b = {};
	struct iommu_sva *h;
	long ret = 0;

	if (f->dt->sva_err) {
		pr_info(DRV ": bind refused: SVA not enabled (%d)\n", f->dt->sva_err);
		return f->dt->sva_err;
	}
	mutex_lock(&f->lock);
	if (!f->bound) {
		h = iommu_sva_bind_device(dev, current->mm);
		if (!IS_ERR(h)) {
			f->handle = h;
			f->pasid = iommu_sva_get_pasid(h);
		} else {
			ret = PTR_ERR(h);
			pr_info(DRV ": iommu_sva_bind_device failed: %ld\n", ret);
			if (ret != -EOPNOTSUPP)
				goto out;
			pr_info(DRV ": SVA disabled in the core (x86); binding in the driver\n");
			ret = dt_driver_bind(f, dev, current->mm);
			if (ret)
				goto out;
		}
		f->bound = true;
		pr_info(DRV ": bound pid %d to pasid %u (%s)\n", current->pid,
			f->pasid, f->handle ? "iommu_sva_bind_device" : "driver");
	}
	b.pasid = f->pasid;
	b.flags = f->domain ? DMATEST_SVA_BIND_DRIVER : 0;
	if (copy_to_user(uarg, &b, sizeof(b)))
		ret = -EFAULT;
out:
	mutex_unlock(&f->lock);
	return ret;
}

static long dt_dma(struct dmatest_file *f, struct dmatest_sva_dma __user *uarg)
{
	struct dmatest *dt = f->dt;
	void __iomem *r = dt->regs;
	struct dmatest_sva_dma a;
	unsigned long start, deadline;
	u32 pasid, st;
	bool bound;

	if (copy_from_user(&a, uarg, sizeof(a)))
		return -EFAULT;
	if ((a.op != 1 && a.op != 2) || !a.len || a.len > MAX_LEN)
		return -EINVAL;
	mutex_lock(&f->lock);
	bound = f->bound;
	pasid = f->pasid;
	mutex_unlock(&f->lock);
	if (!bound)
		return -ENOTCONN;	/* BIND first */

	mutex_lock(&dt->lock);
	iowrite32(lower_32_bits(a.addr), r + REG_ADDR);
	iowrite32(upper_32_bits(a.addr), r + REG_ADDR + 4);
	iowrite32(a.len, r + REG_LEN);
	iowrite32(a.pattern & 0xff, r + REG_PATTERN);
	iowrite32(PASID_VALID | pasid, r + REG_PASID);
	start = jiffies;
	deadline = start + msecs_to_jiffies(10000);
	iowrite32(a.op, r + REG_COMMAND);
	/* A page request is answered by the IOPF workqueue: sleep, don't spin. */
	while ((st = ioread32(r + REG_STATUS)) == ST_PENDING &&
	       time_before(jiffies, deadline))
		usleep_range(1000, 2000);
	a.status = st;
	a.result = ioread32(r + REG_RESULT);
	a.page_requests = ioread32(r + REG_PAGE_REQS);
	a.page_responses = ioread32(r + REG_PAGE_RESPS);
	a.faults = ioread32(r + REG_FAULTS);
	a.done = ioread32(r + REG_DONE);
	a.wait_ms = jiffies_to_msecs(jiffies - start);
	mutex_unlock(&dt->lock);

	pr_info(DRV ": op %u addr %#llx len %u pasid %u: status %u result %#x page_requests %u page_responses %u faults %u (%u ms)%s\n",
		a.op, a.addr, a.len, pasid, a.status, a.result, a.page_requests,
		a.page_responses, a.faults, a.wait_ms,
		st == ST_PENDING ? " TIMEOUT" : "");
	if (copy_to_user(uarg, &a, sizeof(a)))
		return -EFAULT;
	return st == ST_PENDING ? -ETIMEDOUT : 0;
}

static long dt_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct dmatest_file *f = file->private_data;

	switch (cmd) {
	case DMATEST_SVA_BIND:
		return dt_bind(f, (void __user *)arg);
	case DMATEST_SVA_DMA:
		return dt_dma(f, (struct dmatest_sva_dma __user *)arg);
	default:
		return -ENOTTY;
	}
}

static const struct file_operations dt_fops = {
	.owner = THIS_MODULE,
	.open = dt_open,
	.release = dt_release,
	.unlocked_ioctl = dt_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

/* --- PCI driver --- */

static int dt_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct dmatest *dt;
	u32 devid;
	int ret;

	dt = devm_kzalloc(dev, sizeof(*dt), GFP_KERNEL);
	if (!dt)
		return -ENOMEM;
	ret = pcim_enable_device(pdev);
	if (ret) {
		pr_info(DRV ": pcim_enable_device failed: %d\n", ret);
		return ret;
	}
	ret = pcim_iomap_regions(pdev, BIT(0), DRV);
	if (ret) {
		pr_info(DRV ": pcim_iomap_regions failed: %d\n", ret);
		return ret;
	}
	dt->regs = pcim_iomap_table(pdev)[0];
	devid = ioread32(dt->regs + REG_ID);
	if (devid != DEV_ID) {
		pr_info(DRV ": unexpected ID register %#x\n", devid);
		return -ENODEV;
	}
	pci_set_master(pdev);
	dt->pdev = pdev;
	mutex_init(&dt->lock);
	pr_info(DRV ": %s: BAR0 mapped, bus master on, pasid %s, ats %s, pri %s\n",
		pci_name(pdev),
		pci_pasid_features(pdev) >= 0 ? "cap" : "none",
		pci_ats_supported(pdev) ? "cap" : "none",
		pci_pri_supported(pdev) ? "cap" : "none");

	/* IOPF before SVA, as iommu.h requires; keep going on failure so the
	 * test can report what failed (BIND then refuses). */
	dt->iopf_err = iommu_dev_enable_feature(dev, IOMMU_DEV_FEAT_IOPF);
	pr_info(DRV ": enable IOMMU_DEV_FEAT_IOPF: %d\n", dt->iopf_err);
	dt->sva_err = iommu_dev_enable_feature(dev, IOMMU_DEV_FEAT_SVA);
	pr_info(DRV ": enable IOMMU_DEV_FEAT_SVA: %d\n", dt->sva_err);
	pr_info(DRV ": enabled by the IOMMU driver: ats %u pasid %u pri %u\n",
		pdev->ats_enabled, pdev->pasid_enabled, pdev->pri_enabled);

	dt->misc.minor = MISC_DYNAMIC_MINOR;
	dt->misc.name = DRV;
	dt->misc.fops = &dt_fops;
	dt->misc.mode = 0666;
	mutex_lock(&the_dev_lock);
	ret = the_dev ? -EBUSY : misc_register(&dt->misc);
	if (!ret)
		the_dev = dt;
	mutex_unlock(&the_dev_lock);
	if (ret) {
		pr_info(DRV ": misc_register failed: %d\n", ret);
		goto err_features;
	}
	pci_set_drvdata(pdev, dt);
	pr_info(DRV ": /dev/" DRV " ready\n");
	return 0;

err_features:
	if (!dt->sva_err)
		iommu_dev_disable_feature(dev, IOMMU_DEV_FEAT_SVA);
	if (!dt->iopf_err)
		iommu_dev_disable_feature(dev, IOMMU_DEV_FEAT_IOPF);
	pci_clear_master(pdev);
	return ret;
}

/* Open files pin the module, not the device: unbinding the PCI device
 * while /dev/dmatest_sva is open is not supported (test driver). */
static void dt_remove(struct pci_dev *pdev)
{
	struct dmatest *dt = pci_get_drvdata(pdev);

	mutex_lock(&the_dev_lock);
	misc_deregister(&dt->misc);
	the_dev = NULL;
	mutex_unlock(&the_dev_lock);
	if (!dt->sva_err)
		iommu_dev_disable_feature(&pdev->dev, IOMMU_DEV_FEAT_SVA);
	if (!dt->iopf_err)
		iommu_dev_disable_feature(&pdev->dev, IOMMU_DEV_FEAT_IOPF);
	pci_clear_master(pdev);
	pr_info(DRV ": %s removed\n", pci_name(pdev));
}

static const struct pci_device_id dt_ids[] = {
	{ PCI_DEVICE(0x1234, 0x5a5a) },
	{ }
};
MODULE_DEVICE_TABLE(pci, dt_ids);

static struct pci_driver dt_driver = {
	.name = DRV,
	.id_table = dt_ids,
	.probe = dt_probe,
	.remove = dt_remove,
};
module_pci_driver(dt_driver);

MODULE_DESCRIPTION("SVA test driver for the VMM's dma-test device");
MODULE_LICENSE("GPL");
