/* Preloaded into a real `agl serve` (LD_PRELOAD) by tests/test_faults.py: while the file
 * named by AGL_FAIL_WRITES exists, every write to or sync of the SQLite database or its
 * journal fails with EIO, as a dying disk's would; while the one named by AGL_FAIL_SYNCS
 * exists, only the syncs do (the writes land in the page cache); while the one named by
 * AGL_DISK_FULL exists, the writes fail with ENOSPC, as on a full disk; while the one
 * named by AGL_TEMP_FULL exists, writes to unnamed temporary files and to `agl queue`'s
 * copy of its standard input do, as in a full temporary directory; while the one named by
 * AGL_HOLD_SYNCS exists, the database's syncs wait for it to go (a disk slow to sync, which
 * holds durable writes unanswered). Everything else passes through. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int failing_while(const char *variable, int fd, int error, const char *name) {
    const char *trigger = getenv(variable);
    if (trigger == NULL || access(trigger, F_OK) != 0) return 0;
    char link[64], target[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) return 0;
    target[n] = '\0';
    if (strstr(target, name) == NULL) return 0;
    /* A full disk still lets the first connection after a crash rebuild the shared-memory
     * index in the room it held (it truncates the file, then writes it again). */
    if (error == ENOSPC && strstr(target, "agl.db-shm") != NULL) return 0;
    errno = error;
    return 1;
}

static int failing(int fd) {
    return failing_while("AGL_FAIL_WRITES", fd, EIO, "agl.db") || failing_while("AGL_DISK_FULL", fd, ENOSPC, "agl.db")
        || failing_while("AGL_TEMP_FULL", fd, ENOSPC, " (deleted)")
        || failing_while("AGL_TEMP_FULL", fd, ENOSPC, "/agl-queue-");
}
static int failing_sync(int fd) {
    return failing_while("AGL_FAIL_WRITES", fd, EIO, "agl.db") || failing_while("AGL_FAIL_SYNCS", fd, EIO, "agl.db");
}

static void held_while_told(int fd) {
    while (failing_while("AGL_HOLD_SYNCS", fd, 0, "agl.db")) usleep(10000);
}

#define REAL(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t write(int fd, const void *buf, size_t count) {
    return failing(fd) ? -1 : REAL(write)(fd, buf, count);
}
ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    return failing(fd) ? -1 : REAL(pwrite)(fd, buf, count, offset);
}
ssize_t pwrite64(int fd, const void *buf, size_t count, off64_t offset) {
    return failing(fd) ? -1 : REAL(pwrite64)(fd, buf, count, offset);
}
int fsync(int fd) {
    held_while_told(fd);
    return failing_sync(fd) ? -1 : REAL(fsync)(fd);
}
int fdatasync(int fd) {
    held_while_told(fd);
    return failing_sync(fd) ? -1 : REAL(fdatasync)(fd);
}
