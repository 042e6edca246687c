/* Fault injection for tests/tests/edges.rs: an LD_PRELOAD library that makes mount(2) and
 * umount2(2) of targets containing $SLOW_MOUNT_MARK take $SLOW_MOUNT_SECS seconds longer, as a
 * mount on a slow backing filesystem or an overlay unmount syncing its upper layer under IO
 * pressure do. Every other call goes straight to libc. Built by the test with `cc -shared`. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void slow_if_marked(const char *target) {
    const char *mark = getenv("SLOW_MOUNT_MARK");
    const char *secs = getenv("SLOW_MOUNT_SECS");
    if (mark && *mark && target && strstr(target, mark))
        sleep(secs ? (unsigned)atoi(secs) : 2);
}

int mount(const char *source, const char *target, const char *fstype, unsigned long flags, const void *data) {
    static int (*real)(const char *, const char *, const char *, unsigned long, const void *);
    if (!real)
        real = (int (*)(const char *, const char *, const char *, unsigned long, const void *))dlsym(RTLD_NEXT, "mount");
    slow_if_marked(target);
    return real(source, target, fstype, flags, data);
}

int umount2(const char *target, int flags) {
    static int (*real)(const char *, int);
    if (!real)
        real = (int (*)(const char *, int))dlsym(RTLD_NEXT, "umount2");
    slow_if_marked(target);
    return real(target, flags);
}
