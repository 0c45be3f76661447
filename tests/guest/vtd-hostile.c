/*
 * A hostile guest for the emulated VT-d unit: run as root with
 * intel_iommu=off intremap=off iomem=relaxed, so no driver owns the unit.
 *
 * 1. Writes garbage at every offset of the register page with every access
 *    size (1, 2, 4, 8), reading each back, while a dma-test device keeps
 *    doing DMA (translation may be switched on by the garbage at any time).
 * 2. Builds broken translation structures and reads back the fault records
 *    the spec prescribes, printing "REASON <name>=0x..".
 * 3. Breaks the invalidation queue and prints FSTS.IQE and IQERCD.
 * Leaves the unit off so the guest can power off.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define UNIT 0xfed90000UL
#define VER 0x00
#define GCMD 0x18
#define GSTS 0x1c
#define RTADDR 0x20
#define FSTS 0x34
#define FECTL 0x38
#define FEDATA 0x3c
#define FEADDR 0x40
#define FEUADDR 0x44
#define IQH 0x80
#define IQT 0x88
#define IQA 0x90
#define IECTL 0xa0
#define IEDATA 0xa4
#define IEADDR 0xa8
#define IEUADDR 0xac
#define IQERCD 0xb0
#define IRTA 0xb8
#define PECTL 0xe0
#define FRCD 0x220
#define NFR 8

static volatile uint8_t *regs;
static volatile uint8_t *dmat;
static int memfd;

static uint64_t rd64(volatile uint8_t *b, unsigned o) { return *(volatile uint64_t *)(b + o); }
static uint32_t rd32(volatile uint8_t *b, unsigned o) { return *(volatile uint32_t *)(b + o); }
static void wr64(volatile uint8_t *b, unsigned o, uint64_t v) { *(volatile uint64_t *)(b + o) = v; }
static void wr32(volatile uint8_t *b, unsigned o, uint32_t v) { *(volatile uint32_t *)(b + o) = v; }

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void *map_phys(uint64_t pa, size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, pa);
	if (p == MAP_FAILED) {
		perror("mmap /dev/mem");
		exit(1);
	}
	return p;
}

/* A locked, zeroed page of our own and its guest-physical address. */
static uint64_t *page(uint64_t *pa)
{
	uint64_t *p = aligned_alloc(4096, 4096), ent;
	int fd = open("/proc/self/pagemap", O_RDONLY);
	memset(p, 0, 4096);
	mlock(p, 4096);
	pread(fd, &ent, 8, ((uintptr_t)p / 4096) * 8);
	close(fd);
	*pa = (ent & ((1ULL << 55) - 1)) * 4096;
	return p;
}

/* Interrupt message registers keep a harmless message (fixed, vector 0xee). */
static void safe_messages(void)
{
	wr32(regs, FEDATA, 0xee);
	wr32(regs, FEADDR, 0xfee00000);
	wr32(regs, FEUADDR, 0);
	wr32(regs, IEDATA, 0xee);
	wr32(regs, IEADDR, 0xfee00000);
	wr32(regs, IEUADDR, 0);
}

static void quiesce(void)
{
	wr32(regs, GCMD, 0);
	wr32(regs, FECTL, 1u << 31);
	wr32(regs, IECTL, 1u << 31);
	safe_messages();
	wr32(regs, FSTS, 0xff);
	for (int i = 0; i < NFR; i++)
		wr32(regs, FRCD + i * 16 + 12, 1u << 31);
}

static int dma(uint64_t iova, uint32_t op)
{
	wr64(dmat, 0x08, iova);
	wr32(dmat, 0x10, 64);
	wr32(dmat, 0x14, 0x5a);
	wr32(dmat, 0x1c, op);
	return rd32(dmat, 0x20);
}

/* DMA once and return the first recorded fault reason (or -1). */
static int fault_reason(void)
{
	dma(0x1000, 1);
	for (int i = 0; i < NFR; i++) {
		uint32_t hi = rd32(regs, FRCD + i * 16 + 12);
		if (hi & (1u << 31)) {
			wr32(regs, FRCD + i * 16 + 12, 1u << 31);
			return hi & 0xff;
		}
	}
	return -1;
}

static void set_root(uint64_t rtaddr)
{
	wr64(regs, RTADDR, rtaddr);
	wr32(regs, GCMD, 1u << 30);		/* SRTP */
	wr32(regs, GCMD, 1u << 31);		/* TE */
}

int main(int argc, char **argv)
{
	uint64_t dma_bar = strtoull(argv[1], NULL, 0);
	unsigned devfn = strtoul(argv[2], NULL, 0);
	uint64_t pa_root, pa_ctx, pa_q;
	uint64_t *root, *ctx, *q;

	memfd = open("/dev/mem", O_RDWR | O_SYNC);
	if (memfd < 0) {
		perror("/dev/mem");
		return 1;
	}
	regs = map_phys(UNIT, 4096);
	dmat = map_phys(dma_bar, 4096);
	printf("HOSTILE-START ver=%#x cap=%#llx\n", rd32(regs, VER),
	       (unsigned long long)rd64(regs, 0x08));

	root = page(&pa_root);
	ctx = page(&pa_ctx);
	q = page(&pa_q);

	/*
	 * 1. Garbage everywhere, every size, DMA in flight. Two registers keep
	 * pointing at zeroed pages of ours: with a random IQA the unit would
	 * fetch "descriptors" from random guest memory and carry out the
	 * status writes of any wait descriptors found there, and with a random
	 * root table it would set accessed/dirty bits in whatever looks like
	 * first-stage entries — real hardware would do the same, and it would
	 * corrupt this guest's own kernel. The DMA in flight only reads, for
	 * the same reason (with translation off it reaches guest memory
	 * directly). Both registers are broken on purpose in phases 2 and 3.
	 */
	quiesce();
	wr64(regs, IQA, pa_q);
	wr64(regs, RTADDR, pa_root);
	for (unsigned size = 1; size <= 8; size *= 2) {
		for (unsigned off = 0; off + size <= 4096; off++) {
			uint64_t v = next();
			switch (size) {
			case 1: *(volatile uint8_t *)(regs + off) = v; (void)*(volatile uint8_t *)(regs + off); break;
			case 2: *(volatile uint16_t *)(regs + off) = v; (void)*(volatile uint16_t *)(regs + off); break;
			case 4: *(volatile uint32_t *)(regs + off) = v; (void)*(volatile uint32_t *)(regs + off); break;
			case 8: *(volatile uint64_t *)(regs + off) = v; (void)*(volatile uint64_t *)(regs + off); break;
			}
			if (off >= FECTL && off < FEUADDR + 4)
				safe_messages();
			if (off >= IECTL && off < IEUADDR + 4)
				safe_messages();
			if (off + size > IQA && off < IQA + 8)
				wr64(regs, IQA, pa_q);
			if (off + size > RTADDR && off < RTADDR + 8)
				wr64(regs, RTADDR, pa_root);
			if ((off & 63) == 0)
				dma(next() & 0xfffff000, 2);
		}
	}
	quiesce();
	printf("GARBAGE-DONE gsts=%#x\n", rd32(regs, GSTS));

	memset(root, 0, 4096);
	memset(q, 0, 4096);

	/* 2. Legacy mode. */
	set_root(0x3ffff0000000ULL);			/* outside guest RAM */
	printf("REASON legacy-root-outside-ram=%#x\n", fault_reason());
	quiesce();
	root[0] = pa_ctx | 1 | (1 << 5);		/* reserved bit 5 */
	set_root(pa_root);
	printf("REASON legacy-root-reserved=%#x\n", fault_reason());
	quiesce();
	root[0] = pa_ctx | 1;
	ctx[devfn * 2] = 1 | (1 << 4);			/* reserved bit 4 */
	ctx[devfn * 2 + 1] = 2 | (1 << 8);
	set_root(pa_root);
	printf("REASON legacy-context-reserved=%#x\n", fault_reason());
	quiesce();
	ctx[devfn * 2] = 1;				/* AW 5-level: not in SAGAW for 48 */
	ctx[devfn * 2 + 1] = 3 | (1 << 8);
	set_root(pa_root);
	printf("REASON legacy-context-invalid=%#x\n", fault_reason());
	quiesce();
	root[0] = 0;
	set_root(pa_root);
	printf("REASON legacy-root-not-present=%#x\n", fault_reason());
	quiesce();

	/* Scalable mode (RTADDR.TTM = 01b). */
	set_root(0x3ffff0000000ULL | (1 << 10));
	printf("REASON sm-root-outside-ram=%#x\n", fault_reason());
	quiesce();
	root[0] = pa_ctx | 1 | (1 << 3);
	set_root(pa_root | (1 << 10));
	printf("REASON sm-root-reserved=%#x\n", fault_reason());
	quiesce();
	memset(ctx, 0, 4096);
	root[0] = pa_ctx | 1;
	ctx[(devfn & 0x7f) * 4] = 1 | (1 << 5);	/* reserved bit 5 */
	set_root(pa_root | (1 << 10));
	printf("REASON sm-context-reserved=%#x\n", fault_reason());
	quiesce();
	ctx[(devfn & 0x7f) * 4] = 0x3ffff0000000ULL | 1;	/* PASID dir outside RAM */
	set_root(pa_root | (1 << 10));
	printf("REASON sm-pasid-dir-outside-ram=%#x\n", fault_reason());
	quiesce();
	set_root(pa_root | (3 << 10));			/* TTM 11b reserved */
	printf("REASON sm-ttm-reserved=%#x\n", fault_reason());
	quiesce();

	/* 3. The invalidation queue. */
	wr64(regs, IQA, 0x3ffff0000000ULL);		/* outside guest RAM */
	wr32(regs, GCMD, 1u << 26);
	wr64(regs, IQT, 0x20);
	printf("IQE queue-outside-ram fsts=%#x iqercd=%#llx\n", rd32(regs, FSTS),
	       (unsigned long long)rd64(regs, IQERCD));
	wr32(regs, FSTS, 1 << 4);			/* resume: fails again */
	printf("IQE queue-retry fsts=%#x iqh=%#llx\n", rd32(regs, FSTS),
	       (unsigned long long)rd64(regs, IQH));
	quiesce();
	memset(q, 0, 4096);
	q[0] = 0xf;					/* no such descriptor type */
	wr64(regs, IQA, pa_q | (1 << 11));		/* 256-bit descriptors */
	wr32(regs, GCMD, 1u << 26);
	wr64(regs, IQT, 0x20);
	printf("IQE bad-type fsts=%#x iqercd=%#llx iqh=%#llx\n", rd32(regs, FSTS),
	       (unsigned long long)rd64(regs, IQERCD), (unsigned long long)rd64(regs, IQH));
	quiesce();
	q[0] = 2 | (1 << 4) | (1 << 8);			/* IOTLB with a reserved bit */
	wr64(regs, IQA, pa_q | (1 << 11));
	wr32(regs, GCMD, 1u << 26);
	wr64(regs, IQT, 0x20);
	printf("IQE reserved-bits fsts=%#x iqercd=%#llx\n", rd32(regs, FSTS),
	       (unsigned long long)rd64(regs, IQERCD));
	quiesce();
	wr64(regs, IQA, pa_q);				/* 128-bit, 256 entries */
	wr32(regs, GCMD, 1u << 26);
	wr64(regs, IQT, 0x7fff0);			/* beyond the queue */
	printf("IQE tail-beyond-queue fsts=%#x iqercd=%#llx\n", rd32(regs, FSTS),
	       (unsigned long long)rd64(regs, IQERCD));
	quiesce();
	/* Overflow: wrap the queue many times with valid waits. */
	for (int i = 0; i < 256; i++) {
		q[2 * i] = 5 | (1 << 5) | (1ULL << 32);
		q[2 * i + 1] = pa_root + 4088;
	}
	wr64(regs, IQA, pa_q);
	wr32(regs, GCMD, 1u << 26);
	for (int k = 0; k < 4 * 256; k++)
		wr64(regs, IQT, ((k + 1) % 256) << 4);
	printf("IQE wrapped fsts=%#x iqh=%#llx\n", rd32(regs, FSTS),
	       (unsigned long long)rd64(regs, IQH));
	quiesce();

	/* Interrupt remapping table outside guest RAM, remapping on. */
	wr64(regs, IRTA, 0x3ffff0000000ULL | 0xf);
	wr32(regs, GCMD, 1u << 24);
	wr32(regs, GCMD, 1u << 25);
	printf("IR enabled gsts=%#x\n", rd32(regs, GSTS));
	usleep(200000);					/* let timer/serial interrupts hit it */
	quiesce();

	printf("HOSTILE-DONE gsts=%#x fsts=%#x\n", rd32(regs, GSTS), rd32(regs, FSTS));
	return 0;
}
