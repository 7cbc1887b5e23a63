/*
 * How a subcommand answers, and how it ends.  Its output goes straight to fds 1 and 2 (under
 * `docker exec`), in frames on the control connection it came through (worker.c), or, with
 * AGENTBOX_TEXT set, as lines of base64 on stdout; errors are protocol lines with symbolic
 * errno names.  Also the I/O loops every part uses (write_all, read_exactly).
 */

#include <errno.h>
#include <poll.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "helper.h"

/* Symbolic errno names: the host maps them to API errors, so they must not
 * depend on the libc's strerror() wording. */
const char *errno_name(int e) {
    static const struct { int e; const char *n; } tab[] = {
        {ENOENT, "ENOENT"}, {EACCES, "EACCES"}, {EPERM, "EPERM"},
        {ENOTDIR, "ENOTDIR"}, {EISDIR, "EISDIR"}, {ELOOP, "ELOOP"},
        {ENAMETOOLONG, "ENAMETOOLONG"}, {ENOSPC, "ENOSPC"}, {EROFS, "EROFS"},
        {EEXIST, "EEXIST"}, {EINVAL, "EINVAL"}, {ENOMEM, "ENOMEM"},
        {EFBIG, "EFBIG"}, {EDQUOT, "EDQUOT"}, {EIO, "EIO"}, {EBUSY, "EBUSY"},
        {ESRCH, "ESRCH"}, {EBADF, "EBADF"}, {EPIPE, "EPIPE"}, {ETIMEDOUT, "ETIMEDOUT"},
        {ENOTSUP, "ENOTSUP"}, {ECONNREFUSED, "ECONNREFUSED"},
    };
    static char other[32];
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (tab[i].e == e)
            return tab[i].n;
    snprintf(other, sizeof other, "E%d", e);
    return other;
}

/* Protocol error line on stdout; returns exit code 1 for convenience. */
int report_error(int e, const char *msg) {
    printf("E %s %s\n", errno_name(e), msg ? msg : strerror(e));
    fflush(stdout);
    return 1;
}

int flush_stdout(void) { return fflush(stdout) == 0 ? 0 : 1; }

/* write() everything, retrying on EINTR and waiting out EAGAIN (the fd we
 * were handed may be non-blocking).  Returns 0, or -1 with errno set. */
int write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n >= 0) {
            buf += n;
            len -= (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            poll(&p, 1, -1);
        } else if (errno != EINTR) {
            return -1;
        }
    }
    return 0;
}

int read_exactly(int fd, char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = read(fd, buf, len);
        if (n == 0 || (n < 0 && errno != EINTR))
            return -1;
        if (n > 0) {
            buf += n;
            len -= (size_t)n;
        }
    }
    return 0;
}

/* ---- output: straight to fds 1 and 2, or framed on the control socket ------ */

/* The connection a subcommand answers on when it came through the control
 * socket (worker.c); -1 under `docker exec`, where fds 1 and 2 are the
 * exec's own streams. */
int frame_fd = -1;
static int text_out;   /* see base64_write */

int send_frame(int fd, int kind, const void *data, size_t len) {
    unsigned char head[5] = {(unsigned char)kind, (unsigned char)(len >> 24), (unsigned char)(len >> 16),
                             (unsigned char)(len >> 8), (unsigned char)len};
    /* Header and data in one write: over TCP, one segment rather than two for a small frame. */
    struct iovec iov[2] = {{head, sizeof head}, {(void *)data, len}};
    ssize_t n;
    while ((n = writev(fd, iov, len ? 2 : 1)) < 0 && errno == EINTR)
        ;
    if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
        return -1;
    if (n < 0)
        n = 0;   /* a non-blocking fd that is full: write_all below waits */
    if ((size_t)n < sizeof head)
        return write_all(fd, (const char *)head + n, sizeof head - (size_t)n) < 0 ? -1 : write_all(fd, data, len);
    n -= (ssize_t)sizeof head;
    return write_all(fd, (const char *)data + n, len - (size_t)n);
}

/* AGENTBOX_TEXT set: stdout carries text only (E2B's SDK decodes a command's output as UTF-8),
 * so each piece of it goes out as a line of base64. */

static ssize_t base64_write(void *cookie, const char *buf, size_t size) {
    (void)cookie;
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *in = (const unsigned char *)buf;
    char *line = malloc((size + 2) / 3 * 4 + 1);
    if (!line)
        return -1;
    size_t n = 0;
    for (size_t i = 0; i < size; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (i + 1 < size ? (unsigned)in[i + 1] << 8 : 0) |
                     (i + 2 < size ? in[i + 2] : 0);
        line[n++] = digits[v >> 18 & 63];
        line[n++] = digits[v >> 12 & 63];
        line[n++] = i + 1 < size ? digits[v >> 6 & 63] : '=';
        line[n++] = i + 2 < size ? digits[v & 63] : '=';
    }
    line[n++] = '\n';
    int ok = write_all(1, line, n);
    free(line);
    return ok < 0 ? -1 : (ssize_t)size;
}

/* Output of stream 1 (stdout) or 2 (stderr).  Returns 0, or -1 with errno. */
int emit(int stream, const char *buf, size_t len) {
    if (frame_fd >= 0)
        return send_frame(frame_fd, stream, buf, len);
    if (text_out && stream == 1)
        return fflush(stdout) == 0 && base64_write(NULL, buf, len) == (ssize_t)len ? 0 : -1;
    return write_all(stream, buf, len);
}

/* AGENTBOX_TEXT set (main): stdout from here on goes out as lines of base64 (base64_write). */
void text_output(void) {
    cookie_io_functions_t io = {.write = base64_write};
    FILE *text = fopencookie(NULL, "w", io);
    if (text) {
        setvbuf(text, NULL, _IOFBF, BUFSZ);
        stdout = text;
        text_out = 1;
    }
}

/* stdio on a control connection (worker.c): what a subcommand prints goes out in frames of
 * `stream`, 1 stdout or 2 stderr. */
static ssize_t framed_write(void *stream, const char *buf, size_t size) {
    return emit((int)(intptr_t)stream, buf, size) < 0 ? -1 : (ssize_t)size;
}

FILE *framed_stream(int stream) {
    cookie_io_functions_t io = {.write = framed_write};
    FILE *f = fopencookie((void *)(intptr_t)stream, "w", io);
    if (f)
        setvbuf(f, NULL, _IOFBF, BUFSZ);
    return f;
}

/* End the subcommand with `code`; over the control socket, the host learns it from the
 * last frame, and a worker that may serve again goes back to waiting (call_done, worker.c). */
void leave(int code) {
    if (frame_fd >= 0) {
        fflush(stdout);
        fflush(stderr);
        unsigned char c[4] = {(unsigned char)(code >> 24), (unsigned char)(code >> 16),
                              (unsigned char)(code >> 8), (unsigned char)code};
        send_frame(frame_fd, 3, c, sizeof c);
    }
    if (call_done && getpid() == worker_pid)   /* never in a child the subcommand forked */
        siglongjmp(*call_done, 1);
    if (text_out)
        fflush(stdout);
    _exit(code);
}
