/*
 * connect PORT: a TCP connection to PORT on the workspace's own loopback, relayed over the call.
 *
 *   "OK\n" once connected, then the connection's bytes on stdout as they come; stdin goes
 *   to the connection, and its end (the host shutting its side) half-closes it.  Ends when
 *   the server closes its side.  "E <ERRNO> <why>\n" instead of "OK" when nothing listens.
 *
 * This is how port previews reach a server in the workspace without any route into the
 * workspace's network (it works with "network": "none").  127.0.0.1 first, then ::1 for a
 * server that listens on IPv6 only.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helper.h"

static int connect_loopback(int port) {
    struct sockaddr_in v4 = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    struct sockaddr_in6 v6 = {.sin6_family = AF_INET6, .sin6_port = htons((unsigned short)port)};
    v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    v6.sin6_addr = in6addr_loopback;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s >= 0 && connect(s, (struct sockaddr *)&v4, sizeof v4) == 0)
        return s;
    int first = errno;
    if (s >= 0)
        close(s);
    s = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s >= 0 && connect(s, (struct sockaddr *)&v6, sizeof v6) == 0)
        return s;
    if (s >= 0)
        close(s);
    errno = first;
    return -1;
}

/* send() all of it, without SIGPIPE when the server has gone. */
static int send_all(int s, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(s, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

int cmd_connect(int argc, char **argv) {
    char *end;
    long port = argc == 2 ? strtol(argv[1], &end, 10) : 0;
    if (argc != 2 || *end || port < 1 || port > 65535)
        return usage();
    int s = connect_loopback((int)port);
    if (s < 0)
        return report_error(errno, NULL);
    fputs("OK\n", stdout);
    if (flush_stdout())
        return 1;
    struct pollfd fds[2] = {{.fd = 0, .events = POLLIN}, {.fd = s, .events = POLLIN}};
    char buf[BUFSZ];
    for (;;) {
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        if (fds[0].revents) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0) {
                shutdown(s, SHUT_WR);   /* the host has sent all: the server reads its end */
                fds[0].fd = -1;
            } else if (send_all(s, buf, (size_t)n) < 0) {
                break;
            }
        }
        if (fds[1].revents) {
            ssize_t n = read(s, buf, sizeof buf);
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0 || emit(1, buf, (size_t)n) < 0)
                break;
        }
    }
    close(s);
    return 0;
}
