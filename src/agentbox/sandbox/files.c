/*
 * The file operations, run as the workspace's user inside the sandbox: get (a file, its size
 * announced first, or a directory's listing), put (into a temporary file beside the path, renamed
 * into place only when exactly the announced size arrived) and mkdir (-p).
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helper.h"

/* mkdir -p, mode 0755 (minus umask, like mkdir -p).  Returns 0 or errno. */
static int mkdir_p(const char *path) {
    char *p = strdup(path);
    if (!*path || !p) {
        free(p);
        return *path ? ENOMEM : ENOENT;
    }
    int e = 0;
    for (char *s = p + 1; !e; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        if (mkdir(p, 0755) < 0 && errno != EEXIST)
            e = errno;   /* a file in the middle of the path gives ENOTDIR */
        *s = c;
        if (c == '\0')
            break;
    }
    free(p);
    /* EEXIST for the last component may mean a non-directory is there. */
    struct stat st;
    if (!e && stat(path, &st) < 0)
        e = errno;
    return e ? e : S_ISDIR(st.st_mode) ? 0 : EEXIST;
}

/* ---- get ------------------------------------------------------------------ */

struct entry {
    char *name;
    char type;
    long long size, mtime;
    unsigned mode;
};

static int entry_cmp(const void *a, const void *b) {
    return strcmp(((const struct entry *)a)->name, ((const struct entry *)b)->name);
}

/* Files of /proc and /sys say they are empty and are not: what one read gives, up to
 * SIZELESS_MAX bytes (theirs are small), announced with its size like any file. */
#define SIZELESS_MAX (1 << 20)

static int get_sizeless(int fd, mode_t mode) {
    char *buf = malloc(SIZELESS_MAX);
    size_t got = 0;
    ssize_t n;
    while (buf && got < SIZELESS_MAX && ((n = read(fd, buf + got, SIZELESS_MAX - got)) > 0 || (n < 0 && errno == EINTR)))
        got += n > 0 ? (size_t)n : 0;
    close(fd);
    if (!buf)
        return report_error(ENOMEM, NULL);
    printf("F %zu %o\n", got, (unsigned)(mode & 07777));
    fflush(stdout);
    int bad = got > 0 && emit(1, buf, got) < 0;
    free(buf);
    return bad;
}

static int get_file(const char *path) {
    /* O_NONBLOCK + fstat: should the path have become a FIFO since stat(),
     * we neither block in open() nor stream it. */
    int fd = open(path, O_RDONLY | O_NOCTTY | O_NONBLOCK | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) < 0)
        return report_error(errno, NULL);
    if (!S_ISREG(st.st_mode))
        return report_error(EINVAL, "not a regular file or directory");
    if (st.st_size == 0)
        return get_sizeless(fd, st.st_mode);
    printf("F %lld %o\n", (long long)st.st_size, (unsigned)(st.st_mode & 07777));
    fflush(stdout);

    /* Send exactly the announced size, so the framing holds even if the file
     * changes meanwhile; if it shrank (or read fails), pad with NULs and
     * exit 1 so the host discards the content. */
    char buf[BUFSZ];
    int bad = 0;
    for (long long left = st.st_size; left > 0;) {
        size_t want = left < BUFSZ ? (size_t)left : BUFSZ;
        ssize_t n = 0;
        if (!bad && (n = read(fd, buf, want)) < 0 && errno == EINTR)
            continue;
        if (!bad && n <= 0) {
            fprintf(stderr, "agentbox-exec: %s: %s\n", path,
                    n < 0 ? strerror(errno) : "file shrank while reading");
            bad = 1;
        }
        if (bad) {
            memset(buf, 0, want);
            n = (ssize_t)want;
        }
        if (emit(1, buf, (size_t)n) < 0)
            return 1;
        left -= n;
    }
    close(fd);
    return bad;
}

static int get_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d)
        return report_error(errno, NULL);
    struct entry *ents = NULL;
    size_t count = 0, cap = 0;
    struct dirent *de;
    /* Collect everything first, so an error can still be reported instead
     * of a half-written listing. */
    while ((errno = 0, de = readdir(d)) != NULL) {
        struct stat st;
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
            fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
            continue;   /* the latter: removed while we list */
        if (count == cap) {
            cap = cap ? cap * 2 : 64;
            if (!(ents = realloc(ents, cap * sizeof *ents)))
                return report_error(ENOMEM, NULL);
        }
        struct entry *e = &ents[count++];
        if (!(e->name = strdup(de->d_name)))
            return report_error(ENOMEM, NULL);
        e->type = S_ISREG(st.st_mode) ? 'f' : S_ISDIR(st.st_mode) ? 'd'
                : S_ISLNK(st.st_mode) ? 'l' : 'o';
        e->size = (long long)st.st_size;
        e->mode = (unsigned)(st.st_mode & 07777);
        e->mtime = (long long)st.st_mtim.tv_sec;
    }
    if (errno)
        return report_error(errno, NULL);
    closedir(d);
    if (count)
        qsort(ents, count, sizeof *ents, entry_cmp);
    fputs("D\n", stdout);
    for (size_t i = 0; i < count; i++) {
        struct entry *e = &ents[i];
        printf("%c %lld %o %lld %s", e->type, e->size, e->mode, e->mtime, e->name);
        putchar('\0');   /* names may contain anything but '/' and NUL */
    }
    return flush_stdout();
}

int cmd_get(int argc, char **argv) {
    struct stat st;
    if (argc != 2)
        return usage();
    if (stat(argv[1], &st) < 0)
        return report_error(errno, NULL);
    if (S_ISDIR(st.st_mode))
        return get_dir(argv[1]);
    if (S_ISREG(st.st_mode))
        return get_file(argv[1]);
    return report_error(EINVAL, "not a regular file or directory");   /* never open a FIFO */
}

/* ---- put / mkdir ---------------------------------------------------------- */

/* Copy stdin into fd; returns 0 or errno. */
static int copy_stdin(int fd, unsigned long long *total) {
    char buf[BUFSZ];
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf);
        if (n == 0)
            return 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || write_all(fd, buf, (size_t)n) < 0)
            return errno;
        *total += (unsigned long long)n;
    }
}

int cmd_put(int argc, char **argv) {
    const char *path = NULL;
    unsigned long mode = 0644;
    long long expected = -1;   /* -s: commit only if exactly this many bytes arrived */
    int opts = 1;   /* "--" ends options, for paths starting with '-' */
    for (int i = 1; i < argc; i++) {
        if (opts && !strcmp(argv[i], "--")) {
            opts = 0;
        } else if (opts && !strcmp(argv[i], "-p") && i + 1 < argc) {
            char *end, *arg = argv[++i];
            errno = 0;
            mode = strtoul(arg, &end, 8);
            if (errno || end == arg || *end || *arg == '-' || mode > 07777)
                return usage();
        } else if (opts && !strcmp(argv[i], "-s") && i + 1 < argc) {
            char *end, *arg = argv[++i];
            errno = 0;
            expected = strtoll(arg, &end, 10);
            if (errno || end == arg || *end || expected < 0)
                return usage();
        } else if (!path && *argv[i] && (!opts || *argv[i] != '-')) {
            path = argv[i];
        } else {
            return usage();
        }
    }
    if (!path)
        return usage();
    signal(SIGXFSZ, SIG_IGN);   /* past RLIMIT_FSIZE: report EFBIG, don't die */

    struct stat st;
    if (path[strlen(path) - 1] == '/' || (stat(path, &st) == 0 && S_ISDIR(st.st_mode)))
        return report_error(EISDIR, NULL);

    /* The temp file lives next to PATH, so that rename() is atomic. */
    const char *slash = strrchr(path, '/');
    char *dir = slash == path ? strdup("/")
              : slash ? strndup(path, (size_t)(slash - path)) : strdup(".");
    char *tmp = dir ? malloc(strlen(dir) + sizeof "/.agentbox-put.XXXXXX") : NULL;
    if (!tmp)
        return report_error(ENOMEM, NULL);
    int e = mkdir_p(dir);
    if (e)
        return report_error(e, NULL);
    sprintf(tmp, "%s/.agentbox-put.XXXXXX", dir);
    int fd = mkstemp(tmp);
    if (fd < 0)
        return report_error(errno, NULL);

    unsigned long long total = 0;
    e = copy_stdin(fd, &total);
    /* An upload cut short looks like EOF on stdin: without the announced size
     * it would be committed as if complete. */
    int short_upload = !e && expected >= 0 && total != (unsigned long long)expected;
    if (short_upload)
        e = EIO;
    if (!e && fchmod(fd, (mode_t)mode) < 0)
        e = errno;
    if (close(fd) < 0 && !e)   /* some filesystems report ENOSPC only here */
        e = errno;
    if (!e && rename(tmp, path) < 0)
        e = errno;
    if (e) {
        unlink(tmp);
        return report_error(e, short_upload ? "upload incomplete: fewer or more bytes than announced" : NULL);
    }
    printf("OK %llu\n", total);
    return flush_stdout();
}

int cmd_mkdir(int argc, char **argv) {
    if (argc != 2 || !*argv[1])
        return usage();
    int e = mkdir_p(argv[1]);
    if (e)
        return report_error(e, NULL);
    fputs("OK\n", stdout);
    return flush_stdout();
}
