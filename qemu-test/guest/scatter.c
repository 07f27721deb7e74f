// SPDX-License-Identifier: GPL-2.0
/*
 * scatter: leave the guest's free memory in small scattered pieces.
 *
 * Usage: scatter <MiB> <keep_every>
 * Maps <MiB> MiB of anonymous memory, writes every page, then gives back all
 * pages but one of every <keep_every> (munmap of the runs between: the test
 * kernel has no madvise; each run is a mapping, so keep_every must leave
 * fewer than vm.max_map_count of them),
 * so that the memory it freed is cut into runs of <keep_every> - 1 pages
 * with a held page between them. A child process keeps the held pages for
 * ever; the parent prints "scatter: holding <n> kB of <m> kB" once they are
 * held and exits 0, so a shell can run it in the foreground.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long mib, keep, page = sysconf(_SC_PAGESIZE), pages, i, held = 0;
	int ready[2];
	char *area, byte;
	pid_t child;

	if (argc != 3) {
		fprintf(stderr, "usage: scatter <MiB> <keep_every>\n");
		return 2;
	}
	mib = strtol(argv[1], NULL, 0);
	keep = strtol(argv[2], NULL, 0);
	if (mib <= 0 || keep < 2 || page <= 0) {
		fprintf(stderr, "scatter: bad arguments\n");
		return 2;
	}
	if (pipe(ready) != 0) {
		perror("scatter: pipe");
		return 1;
	}
	child = fork();
	if (child < 0) {
		perror("scatter: fork");
		return 1;
	}
	if (child > 0) {
		/* The parent: wait for the child's count of held pages. */
		close(ready[1]);
		if (read(ready[0], &held, sizeof(held)) != sizeof(held) || held <= 0) {
			fprintf(stderr, "scatter: the child failed\n");
			return 1;
		}
		printf("scatter: holding %ld kB of %ld kB\n", held * (page / 1024),
		       mib * 1024);
		return 0;
	}
	close(ready[0]);
	pages = mib * (1024 * 1024 / page);
	area = mmap(NULL, pages * page, PROT_READ | PROT_WRITE,
		    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED) {
		perror("scatter: mmap");
		held = -1;
		(void)!write(ready[1], &held, sizeof(held));
		return 1;
	}
	for (i = 0; i < pages; i++)
		area[i * page] = (char)i;
	for (i = 0; i < pages; i += keep) {
		long run = keep - 1 < pages - i - 1 ? keep - 1 : pages - i - 1;

		held++;
		if (run > 0 && munmap(area + (i + 1) * page, run * page) != 0) {
			perror("scatter: munmap");
			held = -1;
			break;
		}
	}
	(void)!write(ready[1], &held, sizeof(held));
	close(ready[1]);
	if (held < 0)
		return 1;
	freopen("/dev/null", "w", stdout);
	freopen("/dev/null", "w", stderr);
	for (;;) {
		pause();
		byte = area[0];
		(void)byte;
	}
}
