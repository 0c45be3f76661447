// SPDX-License-Identifier: GPL-2.0
/*
 * dmatest_sva: a minimal SVA driver for the VMM's dma-test device
 * (1234:5a5a). It enables IOPF and SVA on the device and gives user space
 * /dev/dmatest_sva to bind its address space (a PASID) and make the device
 * DMA to process virtual addresses. Pages the process never touched fault
 * on the device side; the IOMMU's page request handling resolves them.
 *
 * ioctls (one bond per open file, unbound on close):
 *   DMATEST_SVA_BIND  -> __u32 pasid
 *   DMATEST_SVA_DMA   <-> struct dmatest_sva_dma
 */
#include <linux/delay.h>
#include <linux/fs.h>
#include <linux/iommu.h>
#include <linux/ioctl.h>
#include <linux/jiffies.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/pci.h>
#include <linux/pci-ats.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

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

#define DMATEST_SVA_BIND	_IOR('D', 1, __u32)
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
	struct mutex lock;	/* protects handle */
	struct iommu_sva *handle;
	u32 pasid;
};

/* The single device (the misc node is fixed-name). */
static struct dmatest *the_dev;
static DEFINE_MUTEX(the_dev_lock);

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

	if (f->handle) {
		iommu_sva_unbind_device(f->handle);
		pr_info(DRV ": unbound pasid %u\n", f->pasid);
	}
	kfree(f);
	return 0;
}

static long dt_bind(struct dmatest_file *f, u32 __user *out)
{
	struct device *dev = &f->dt->pdev->dev;
	struct iommu_sva *h;
	long ret = 0;

	if (f->dt->sva_err) {
		pr_info(DRV ": bind refused: SVA not enabled (%d)\n", f->dt->sva_err);
		return f->dt->sva_err;
	}
	mutex_lock(&f->lock);
	if (!f->handle) {
		h = iommu_sva_bind_device(dev, current->mm);
		if (IS_ERR(h)) {
			ret = PTR_ERR(h);
			pr_info(DRV ": iommu_sva_bind_device failed: %ld\n", ret);
			goto out;
		}
		f->handle = h;
		f->pasid = iommu_sva_get_pasid(h);
		pr_info(DRV ": bound pid %d to pasid %u\n", current->pid, f->pasid);
	}
	if (put_user(f->pasid, out))
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
	bound = f->handle != NULL;
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
		return dt_bind(f, (u32 __user *)arg);
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
