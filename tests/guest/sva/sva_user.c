/*
 * Guest side of the SVA test: binds this process's address space to the
 * dma-test device through /dev/dmatest_sva (dmatest_sva.ko) and makes the
 * device DMA to plain virtual addresses.
 *
 * 1. WRITE 0xa5 over the second of three freshly mmap'ed pages the CPU
 *    never touched: the device's translation faults, it sends a page
 *    request, the guest's IOPF handler faults the page in, answers, and
 *    the device retries. The CPU then checks the page.
 * 2. READ a page the CPU filled; the device returns the byte sum.
 *
 * Prints KEY=value lines (SVA-PASID, SVA-BIND-BY-DRIVER, SVA-STATUS,
 * SVA-PAGE-REQUESTS, SVA-PAGE-RESPONSES, SVA-DATA-OK, SVA-READ-OK, ...).
 * Exit status 0 when both checks pass.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

struct dmatest_sva_bind {
	uint32_t pasid;
	uint32_t flags; /* 1: bound by the driver, not iommu_sva_bind_device() */
};

struct dmatest_sva_dma {
	uint64_t addr;
	uint32_t len;
	uint32_t pattern;
	uint32_t op;
	uint32_t status;
	uint32_t result;
	uint32_t page_requests;
	uint32_t page_responses;
	uint32_t faults;
	uint32_t done;
	uint32_t wait_ms;
};

#define DMATEST_SVA_BIND _IOR('D', 1, struct dmatest_sva_bind)
#define DMATEST_SVA_DMA _IOWR('D', 2, struct dmatest_sva_dma)
#define OP_WRITE 1
#define OP_READ 2
#define PAGE 4096

static int dma(int fd, const char *tag, uint32_t op, void *addr, uint32_t len,
	       uint32_t pattern, struct dmatest_sva_dma *d)
{
	int ret;

	memset(d, 0, sizeof(*d));
	d->addr = (uintptr_t)addr;
	d->len = len;
	d->pattern = pattern;
	d->op = op;
	ret = ioctl(fd, DMATEST_SVA_DMA, d);
	printf("%s: ioctl=%d%s%s status=%u result=%#x page_requests=%u "
	       "page_responses=%u faults=%u done=%u wait_ms=%u\n",
	       tag, ret, ret ? " " : "", ret ? strerror(errno) : "", d->status,
	       d->result, d->page_requests, d->page_responses, d->faults,
	       d->done, d->wait_ms);
	return ret;
}

int main(void)
{
	struct dmatest_sva_dma d, r;
	struct dmatest_sva_bind b = { 0, 0 };
	unsigned char *buf, *src;
	uint32_t sum = 0, i;
	int fd, ok = 1, bad = -1;

	setvbuf(stdout, NULL, _IONBF, 0);
	fd = open("/dev/dmatest_sva", O_RDWR);
	if (fd < 0) {
		printf("SVA-OPEN-FAILED %s\n", strerror(errno));
		return 1;
	}
	if (ioctl(fd, DMATEST_SVA_BIND, &b)) {
		printf("SVA-BIND-FAILED %s\n", strerror(errno));
		return 1;
	}
	printf("SVA-PASID=%u\n", b.pasid);
	printf("SVA-BIND-BY-DRIVER=%u\n", b.flags & 1);

	/* Three anonymous pages, never touched by the CPU before the DMA. */
	buf = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buf == MAP_FAILED) {
		printf("SVA-MMAP-FAILED %s\n", strerror(errno));
		return 1;
	}
	if (dma(fd, "SVA-WRITE", OP_WRITE, buf + PAGE, PAGE, 0xa5, &d))
		ok = 0;
	printf("SVA-STATUS=%u\n", d.status);
	printf("SVA-PAGE-REQUESTS=%u\n", d.page_requests);
	printf("SVA-PAGE-RESPONSES=%u\n", d.page_responses);
	for (i = 0; i < PAGE; i++) {
		if (buf[PAGE + i] != 0xa5) {
			bad = i;
			break;
		}
	}
	if (bad < 0) {
		printf("SVA-DATA-OK=1\n");
	} else {
		printf("SVA-DATA-OK=0 first bad byte at %d: %#x\n", bad,
		       buf[PAGE + bad]);
		ok = 0;
	}

	/* A page the CPU filled: the device reads it through the PASID. */
	src = buf + 2 * PAGE;
	for (i = 0; i < PAGE; i++) {
		src[i] = (unsigned char)(i * 7 + 3);
		sum += src[i];
	}
	if (dma(fd, "SVA-READ", OP_READ, src, PAGE, 0, &r))
		ok = 0;
	printf("SVA-READ-STATUS=%u\n", r.status);
	printf("SVA-READ-SUM=%#x expected=%#x\n", r.result, sum);
	if (r.status == 1 && r.result == sum) {
		printf("SVA-READ-OK=1\n");
	} else {
		printf("SVA-READ-OK=0\n");
		ok = 0;
	}
	printf("SVA-FINAL-PAGE-REQUESTS=%u\n", r.page_requests);
	printf("SVA-FINAL-PAGE-RESPONSES=%u\n", r.page_responses);
	printf("SVA-FAULTS=%u\n", r.faults);
	close(fd);
	return ok ? 0 : 1;
}
