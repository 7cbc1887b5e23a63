/*
 * watch PATH [-r]: file system events under a directory, as lines, until the host leaves.
 *
 *   "W" once the watch is in place (what happens after it is seen), then per event
 *   "<create|write|remove|rename|chmod> <path>", each ended by a NUL (names may hold
 *   newlines); an empty one every 2 s of quiet, so that a host that went away is noticed
 *   (the write fails).  "E <ERRNO> <why>\n" instead of "W" when it cannot watch.
 *
 * With -r, directories created later are watched too; what one already holds when its watch
 * is in place (a file made in it at once, a tree moved in) is reported as created (and
 * written, when not empty), as it could not be seen otherwise.  Ends when the directory itself goes ("remove PATH" last).
 */
#include <errno.h>
#include <dirent.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helper.h"

#define EVENTS (IN_CREATE | IN_MODIFY | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF)
#define MAX_WATCHES 8192

static char *watched[MAX_WATCHES];   /* path of each watch descriptor (they are small integers) */

/* Watch `path` (and, recursive, the directories under it); with `report`, say that what
 * they hold was created. */
static void add_watch(int fd, const char *path, int recursive, int report) {
    int wd = inotify_add_watch(fd, path, EVENTS | IN_ONLYDIR);
    if (wd < 0 || wd >= MAX_WATCHES)
        return;
    free(watched[wd]);
    watched[wd] = strdup(path);
    if (!recursive)
        return;
    DIR *d = opendir(path);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        char child[PATH_MAX];
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (snprintf(child, sizeof child, "%s/%s", path, de->d_name) >= (int)sizeof child)
            continue;
        struct stat st;
        if (report) {   /* a file already written was created, then written: both are said */
            printf("create %s", child);
            putchar('\0');
            if (lstat(child, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 0) {
                printf("write %s", child);
                putchar('\0');
            }
        }
        if (de->d_type == DT_DIR)
            add_watch(fd, child, recursive, report);
    }
    if (d)
        closedir(d);
}

static const char *kind_of(unsigned mask) {
    if (mask & IN_CREATE)
        return "create";
    if (mask & (IN_DELETE | IN_DELETE_SELF))
        return "remove";
    if (mask & (IN_MOVED_FROM | IN_MOVED_TO | IN_MOVE_SELF))
        return "rename";
    if (mask & IN_ATTRIB)
        return "chmod";
    return "write";
}

int cmd_watch(int argc, char **argv) {
    int recursive = argc == 3 && !strcmp(argv[2], "-r");
    struct stat st;
    if (argc < 2 || argc > 3 || (argc == 3 && !recursive))
        return usage();
    if (stat(argv[1], &st) < 0)
        return report_error(errno, NULL);
    if (!S_ISDIR(st.st_mode))
        return report_error(ENOTDIR, NULL);
    int fd = inotify_init1(IN_CLOEXEC);
    if (fd < 0)
        return report_error(errno, "inotify");
    char root[PATH_MAX];
    snprintf(root, sizeof root, "%s", argv[1]);
    for (size_t n = strlen(root); n > 1 && root[n - 1] == '/'; n--)
        root[n - 1] = '\0';
    add_watch(fd, root, recursive, 0);
    fputs("W", stdout);
    putchar('\0');
    if (flush_stdout())
        return 1;
    char buf[65536] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ready = poll(&p, 1, 2000);
        if (ready == 0) {
            putchar('\0');   /* keep-alive */
            if (flush_stdout())
                return 1;
            continue;
        }
        ssize_t n = ready > 0 ? read(fd, buf, sizeof buf) : -1;
        if (n <= 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            return report_error(errno, "inotify");
        }
        for (char *at = buf; at < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)at;
            at += sizeof *e + e->len;
            const char *dir = e->wd >= 0 && e->wd < MAX_WATCHES ? watched[e->wd] : NULL;
            if (!dir || (e->mask & IN_IGNORED))
                continue;
            char path[PATH_MAX];
            if (e->len)
                snprintf(path, sizeof path, "%s/%s", dir, e->name);
            else
                snprintf(path, sizeof path, "%s", dir);
            if ((e->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) && strcmp(dir, root))
                continue;   /* a subdirectory: its parent's watch reports it */
            printf("%s %s", kind_of(e->mask), path);
            putchar('\0');
            if (recursive && (e->mask & (IN_CREATE | IN_MOVED_TO)) && (e->mask & IN_ISDIR))
                add_watch(fd, path, recursive, 1);
            if ((e->mask & (IN_DELETE_SELF | IN_MOVE_SELF)) && !strcmp(dir, root))
                return flush_stdout();
        }
        if (flush_stdout())
            return 1;
    }
}
