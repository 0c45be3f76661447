/*
 * Runs in a guest whose IOMMU is the VMM's emulated VT-d with nesting
 * offered: takes a device bound to vfio-pci (the VMM's dma-test) through
 * iommufd to a nested page table, the way a guest hypervisor does for the
 * devices it passes on, and checks that DMA lands where first stage o
 * second stage says.
 *
 *   nest-probe /dev/vfio/devices/vfioN [PASID]
 *
 * With a PASID the nested table is attached to that PASID of the device
 * (both page tables allocated for PASID use, the device itself on the
 * nest parent), and the DMAs carry the PASID. The nested table then has
 * an iommufd fault queue: the device's page requests (PRI) arrive here as
 * fault records, and the probe answers them (PRQ-INVALID, PRQ-SERVED).
 *
 * Prints KEY=VALUE lines (HW-INFO-*, NEST-PARENT, NESTED, ATTACH, DMA1,
 * INVALIDATE, DMA2, DMA3) for the test to check; exits 0 once it printed
 * them all, 1 at the first failure.
 *
 * The iommufd and VFIO cdev uAPI structures are spelled out here (from
 * include/uapi/linux/iommufd.h and vfio.h of Linux 7.2): the build host's
 * headers predate them.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define IOMMUFD_TYPE ';'
#define IOMMU_IOAS_ALLOC _IO(IOMMUFD_TYPE, 0x81)
#define IOMMU_IOAS_MAP _IO(IOMMUFD_TYPE, 0x85)
#define IOMMU_HWPT_ALLOC _IO(IOMMUFD_TYPE, 0x89)
#define IOMMU_GET_HW_INFO _IO(IOMMUFD_TYPE, 0x8a)
#define IOMMU_HWPT_INVALIDATE _IO(IOMMUFD_TYPE, 0x8d)
#define IOMMU_FAULT_QUEUE_ALLOC _IO(IOMMUFD_TYPE, 0x8e)

#define VFIO_TYPE ';'
#define VFIO_BASE 100
#define VFIO_DEVICE_GET_REGION_INFO _IO(VFIO_TYPE, VFIO_BASE + 8)
#define VFIO_DEVICE_BIND_IOMMUFD _IO(VFIO_TYPE, VFIO_BASE + 18)
#define VFIO_DEVICE_ATTACH_IOMMUFD_PT _IO(VFIO_TYPE, VFIO_BASE + 19)
#define VFIO_PCI_BAR0_REGION_INDEX 0
#define VFIO_PCI_CONFIG_REGION_INDEX 7

struct ioas_alloc { uint32_t size, flags, out_ioas_id; };
struct ioas_map {
	uint32_t size, flags, ioas_id, reserved;
	uint64_t user_va, length, iova;
};
#define IOAS_MAP_FIXED_IOVA 1
#define IOAS_MAP_WRITEABLE 2
#define IOAS_MAP_READABLE 4

struct hwpt_alloc {
	uint32_t size, flags, dev_id, pt_id, out_hwpt_id, reserved;
	uint32_t data_type, data_len;
	uint64_t data_uptr;
	uint32_t fault_id, reserved2;
};
#define HWPT_ALLOC_NEST_PARENT 1
#define HWPT_ALLOC_PASID 8
#define HWPT_FAULT_ID_VALID 4

struct fault_alloc { uint32_t size, flags, out_fault_id, out_fault_fd; };
struct pgfault {
	uint32_t flags, dev_id, pasid, grpid, perm, reserved;
	uint64_t addr;
	uint32_t length, cookie;
};
struct page_response { uint32_t cookie, code; };
#define PAGE_RESP_SUCCESS 0
#define PAGE_RESP_INVALID 1
#define HWPT_DATA_VTD_S1 1

struct hwpt_vtd_s1 {
	uint64_t flags, pgtbl_addr;
	uint32_t addr_width, reserved;
};

struct hw_info {
	uint32_t size, flags, dev_id, data_len;
	uint64_t data_uptr;
	uint32_t out_data_type;
	uint8_t out_max_pasid_log2, reserved[3];
	uint64_t out_capabilities;
};
#define HW_INFO_TYPE_INTEL_VTD 1

struct hw_info_vtd {
	uint32_t flags, reserved;
	uint64_t cap_reg, ecap_reg;
};

struct hwpt_invalidate {
	uint32_t size, hwpt_id;
	uint64_t data_uptr;
	uint32_t data_type, entry_len, entry_num, reserved;
};
#define HWPT_INVALIDATE_DATA_VTD_S1 0

struct vtd_s1_invalidate {
	uint64_t addr, npages;
	uint32_t flags, reserved;
};

struct bind_iommufd { uint32_t argsz, flags; int32_t iommufd; uint32_t out_devid; };
struct attach_pt { uint32_t argsz, flags, pt_id, pasid; };
#define ATTACH_PASID 1
struct region_info {
	uint32_t argsz, flags, index, cap_offset;
	uint64_t size, offset;
};

/* dma-test's BAR 0 (devices/src/dma_test.rs). */
#define DT_ADDR 0x08
#define DT_LEN 0x10
#define DT_PATTERN 0x14
#define DT_PASID 0x18
#define DT_COMMAND 0x1c
#define DT_STATUS 0x20
#define DT_CMD_WRITE 1

#define PAGE 4096ul
/* The nest parent maps the buffer here (IOVA = the guest's "physical"). */
#define IPA_BASE 0x10000000ul
/* The device's address, translated by the first stage the probe builds. */
#define VA 0x40000000ul

static int dev;
static uint64_t bar0, config;
/* The PASID the DMAs carry (dma-test's PASID register: bit 31 = tag). */
static uint32_t dma_pasid;

static int fail(const char *what)
{
	printf("%s=err:%s\n", what, strerror(errno));
	return 1;
}

static uint64_t region_offset(uint32_t index)
{
	struct region_info ri = { .argsz = sizeof(ri), .index = index };
	if (ioctl(dev, VFIO_DEVICE_GET_REGION_INFO, &ri))
		return ~0ul;
	return ri.offset;
}

static int put(uint64_t off, const void *v, size_t n)
{
	return pwrite(dev, v, n, bar0 + off) == (ssize_t)n ? 0 : -1;
}

static int put32(uint64_t off, uint32_t v) { return put(off, &v, 4); }

/* One dma-test WRITE of `len` bytes of `pattern` at `addr`; its STATUS. */
static int dma_write(uint64_t addr, uint32_t len, uint8_t pattern)
{
	uint32_t status = ~0u;
	if (put(DT_ADDR, &addr, 8) || put32(DT_LEN, len) || put32(DT_PATTERN, pattern) ||
	    put32(DT_PASID, dma_pasid) ||
	    put32(DT_COMMAND, DT_CMD_WRITE) ||
	    pread(dev, &status, 4, bar0 + DT_STATUS) != 4)
		return -1;
	return (int)status;
}

/* dma-test's STATUS once it left 3 (waiting for a page response). */
static int settled_status(void)
{
	uint32_t status = 3;
	for (int i = 0; i < 200 && status == 3; i++) {
		usleep(10000);
		if (pread(dev, &status, 4, bar0 + DT_STATUS) != 4)
			return -1;
	}
	return (int)status;
}

/* The next page request from the fault queue (addr 0: none in 5 s). */
static struct pgfault next_fault(int fault_fd)
{
	struct pgfault f = { 0 };
	struct pollfd p = { .fd = fault_fd, .events = POLLIN };
	if (poll(&p, 1, 5000) == 1 && read(fault_fd, &f, sizeof(f)) != (ssize_t)sizeof(f))
		memset(&f, 0, sizeof(f));
	return f;
}

static int respond(int fault_fd, uint32_t cookie, uint32_t code)
{
	struct page_response r = { .cookie = cookie, .code = code };
	return write(fault_fd, &r, sizeof(r)) == (ssize_t)sizeof(r) ? 0 : -1;
}

static int all(const uint8_t *p, size_t n, uint8_t v)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != v)
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	if (argc != 2 && argc != 3) {
		fprintf(stderr, "usage: nest-probe /dev/vfio/devices/vfioN [PASID]\n");
		return 2;
	}
	uint32_t pasid = argc == 3 ? (uint32_t)strtoul(argv[2], NULL, 0) : 0;
	uint32_t pasid_flag = argc == 3 ? HWPT_ALLOC_PASID : 0;
	int fd = open("/dev/iommu", O_RDWR);
	if (fd < 0)
		return fail("IOMMUFD");
	dev = open(argv[1], O_RDWR);
	if (dev < 0)
		return fail("VFIO-CDEV");
	struct bind_iommufd bind = { .argsz = sizeof(bind), .iommufd = fd };
	if (ioctl(dev, VFIO_DEVICE_BIND_IOMMUFD, &bind))
		return fail("BIND");

	struct hw_info_vtd vtd = { 0 };
	struct hw_info info = { .size = sizeof(info), .dev_id = bind.out_devid,
				.data_len = sizeof(vtd), .data_uptr = (uintptr_t)&vtd };
	if (ioctl(fd, IOMMU_GET_HW_INFO, &info))
		return fail("HW-INFO");
	printf("HW-INFO-TYPE=%u\nHW-INFO-ECAP=%#llx\nHW-INFO-NEST=%llu\n", info.out_data_type,
	       (unsigned long long)vtd.ecap_reg, (unsigned long long)(vtd.ecap_reg >> 26) & 1);

	struct ioas_alloc ioas = { .size = sizeof(ioas) };
	if (ioctl(fd, IOMMU_IOAS_ALLOC, &ioas))
		return fail("IOAS");
	/* Pages 0-3: the first-stage PML4, PDPT, PD and PT; 4 and 5: data. */
	uint8_t *buf = mmap(NULL, 8 * PAGE, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (buf == MAP_FAILED)
		return fail("MMAP");
	memset(buf, 0, 8 * PAGE);
	uint64_t *pml4 = (uint64_t *)buf, *pdpt = pml4 + 512, *pd = pdpt + 512, *pt = pd + 512;
	const uint64_t flags = 1 | 2 | 4; /* present, writable, user */
	pml4[(VA >> 39) & 511] = (IPA_BASE + 1 * PAGE) | flags;
	pdpt[(VA >> 30) & 511] = (IPA_BASE + 2 * PAGE) | flags;
	pd[(VA >> 21) & 511] = (IPA_BASE + 3 * PAGE) | flags;
	pt[(VA >> 12) & 511] = (IPA_BASE + 4 * PAGE) | flags;
	struct ioas_map map = { .size = sizeof(map), .ioas_id = ioas.out_ioas_id,
				.flags = IOAS_MAP_FIXED_IOVA | IOAS_MAP_READABLE | IOAS_MAP_WRITEABLE,
				.user_va = (uintptr_t)buf, .length = 8 * PAGE, .iova = IPA_BASE };
	if (ioctl(fd, IOMMU_IOAS_MAP, &map))
		return fail("IOAS-MAP");

	struct hwpt_alloc parent = { .size = sizeof(parent),
				     .flags = HWPT_ALLOC_NEST_PARENT | pasid_flag,
				     .dev_id = bind.out_devid, .pt_id = ioas.out_ioas_id };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &parent))
		return fail("NEST-PARENT");
	printf("NEST-PARENT=ok\n");

	struct hwpt_vtd_s1 s1 = { .pgtbl_addr = IPA_BASE, .addr_width = 48 };
	struct fault_alloc fq = { .size = sizeof(fq) };
	if (pasid_flag) {
		if (ioctl(fd, IOMMU_FAULT_QUEUE_ALLOC, &fq))
			return fail("FAULT-QUEUE");
		printf("FAULT-QUEUE=ok\n");
	}
	struct hwpt_alloc nested = { .size = sizeof(nested),
				     .flags = pasid_flag | (pasid_flag ? HWPT_FAULT_ID_VALID : 0),
				     .fault_id = fq.out_fault_id,
				     .dev_id = bind.out_devid,
				     .pt_id = parent.out_hwpt_id, .data_type = HWPT_DATA_VTD_S1,
				     .data_len = sizeof(s1), .data_uptr = (uintptr_t)&s1 };
	if (ioctl(fd, IOMMU_HWPT_ALLOC, &nested))
		return fail("NESTED");
	printf("NESTED=ok\n");

	if (pasid_flag) {
		/* The device itself on the parent: second stage only. */
		struct attach_pt rid = { .argsz = sizeof(rid), .pt_id = parent.out_hwpt_id };
		if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &rid))
			return fail("ATTACH-RID");
		printf("ATTACH-RID=ok\n");
	}
	struct attach_pt at = { .argsz = sizeof(at), .flags = pasid_flag ? ATTACH_PASID : 0,
				.pt_id = nested.out_hwpt_id, .pasid = pasid };
	if (ioctl(dev, VFIO_DEVICE_ATTACH_IOMMUFD_PT, &at))
		return fail("ATTACH");
	printf("ATTACH=ok\n");
	dma_pasid = pasid_flag ? (1u << 31) | pasid : 0;

	bar0 = region_offset(VFIO_PCI_BAR0_REGION_INDEX);
	config = region_offset(VFIO_PCI_CONFIG_REGION_INDEX);
	uint16_t cmd = 0;
	if (pread(dev, &cmd, 2, config + 4) != 2)
		return fail("CONFIG");
	cmd |= 2 | 4; /* memory space, bus master */
	if (pwrite(dev, &cmd, 2, config + 4) != 2)
		return fail("CONFIG");

	/* The device writes through first stage (VA -> IPA) and second stage. */
	int st = dma_write(VA + 0x100, 64, 0xa5);
	printf("DMA1-STATUS=%d\n", st);
	printf("DMA1=%s\n", all(buf + 4 * PAGE + 0x100, 64, 0xa5) ? "ok" : "missing");

	/* Move the page to the next one and invalidate, in one batch with
	 * unrelated pages: the device must follow. */
	pt[(VA >> 12) & 511] = (IPA_BASE + 5 * PAGE) | flags;
	struct vtd_s1_invalidate inv[8];
	for (int i = 0; i < 8; i++)
		inv[i] = (struct vtd_s1_invalidate){ .addr = VA + (uint64_t)i * 7 * PAGE, .npages = 1 };
	struct hwpt_invalidate hi = { .size = sizeof(hi), .hwpt_id = nested.out_hwpt_id,
				      .data_uptr = (uintptr_t)inv,
				      .data_type = HWPT_INVALIDATE_DATA_VTD_S1,
				      .entry_len = sizeof(inv[0]), .entry_num = 8 };
	if (ioctl(fd, IOMMU_HWPT_INVALIDATE, &hi))
		return fail("INVALIDATE");
	printf("INVALIDATE=ok entries=%u\n", hi.entry_num);
	st = dma_write(VA + 0x200, 64, 0x5a);
	printf("DMA2-STATUS=%d\n", st);
	printf("DMA2=%s\n", all(buf + 5 * PAGE + 0x200, 64, 0x5a) &&
				    all(buf + 4 * PAGE + 0x200, 64, 0) ? "ok" : "wrong-page");
	/* A page the first stage does not map: the unit faults the DMA and
	 * reports it to this kernel's DMAR driver (no fault queue here). */
	st = dma_write(VA + 8 * PAGE, 64, 0x3c);
	if (pasid_flag && st == 3) {
		/* A page request: refuse it, and the device gives up. */
		struct pgfault f = next_fault(fq.out_fault_fd);
		printf("PRQ1-ADDR=%#llx PRQ1-PASID=%u\n", (unsigned long long)f.addr, f.pasid);
		if (!f.addr || respond(fq.out_fault_fd, f.cookie, PAGE_RESP_INVALID))
			return fail("PRQ-INVALID");
		st = settled_status();
		printf("PRQ-INVALID=ok\n");
	}
	printf("DMA3-STATUS=%d\n", st);
	if (pasid_flag) {
		/* A page request served: map the page, invalidate, answer
		 * success, and the device's retry completes. */
		st = dma_write(VA + 9 * PAGE, 64, 0xc3);
		printf("DMA4-FIRST-STATUS=%d\n", st);
		struct pgfault f = next_fault(fq.out_fault_fd);
		printf("PRQ2-ADDR=%#llx\n", (unsigned long long)f.addr);
		pt[((VA >> 12) & 511) + 9] = (IPA_BASE + 7 * PAGE) | flags;
		struct vtd_s1_invalidate one = { .addr = VA + 9 * PAGE, .npages = 1 };
		struct hwpt_invalidate h1 = { .size = sizeof(h1), .hwpt_id = nested.out_hwpt_id,
					      .data_uptr = (uintptr_t)&one,
					      .data_type = HWPT_INVALIDATE_DATA_VTD_S1,
					      .entry_len = sizeof(one), .entry_num = 1 };
		if (!f.addr || ioctl(fd, IOMMU_HWPT_INVALIDATE, &h1) ||
		    respond(fq.out_fault_fd, f.cookie, PAGE_RESP_SUCCESS))
			return fail("PRQ-SERVED");
		st = settled_status();
		printf("DMA4-STATUS=%d\n", st);
		printf("PRQ-SERVED=%s\n", all(buf + 7 * PAGE, 64, 0xc3) ? "ok" : "missing");
		/* Without the PASID the device is on the parent: IPA = IOVA. */
		dma_pasid = 0;
		st = dma_write(IPA_BASE + 6 * PAGE, 64, 0x77);
		printf("DMA-RID-STATUS=%d\n", st);
		printf("DMA-RID=%s\n", all(buf + 6 * PAGE, 64, 0x77) ? "ok" : "missing");
	}
	return 0;
}
