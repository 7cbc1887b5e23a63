/*
 * The helper channel over TCP: the workspace's channel key, and the handshake that proves it.
 *
 * The Unix control socket is reachable only through a host directory, so whoever connects is
 * the host.  A TCP port is reachable by anything routed to the workspace, so a connection there
 * must first prove that it knows the workspace's channel key (a secret only the control plane
 * and this sandbox hold), and the helper proves it too, since a stale address may lead the host
 * to another workspace.  Challenge-response both ways, with fresh nonces (docs/architecture.md):
 *
 *   host -> helper   "AGXT" + the host's nonce (32 random bytes)
 *   helper -> host   the helper's nonce (32 random bytes)
 *                    + HMAC-SHA256(key, LISTENER_LABEL || workspace id || NUL || host nonce || helper nonce)
 *   host -> helper   HMAC-SHA256(key, CLIENT_LABEL || workspace id || NUL || host nonce || helper nonce)
 *                    then the request, exactly as on the Unix socket (serve_one, worker.c)
 *
 * Each proof covers the other side's fresh nonce, so none can be replayed, and the two labels
 * differ, so the helper's answer to a stranger's nonce is never a host's proof.  The helper reads
 * exactly these 36 and 32 bytes, within HANDSHAKE_MS in all; a wrong magic, a wrong proof, or
 * silence closes the connection before a byte of the request is read.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "helper.h"

#define MAGIC "AGXT"
#define MAGIC_BYTES 4
#define NONCE_BYTES 32
#define LISTENER_LABEL "agentbox-helper-channel-1 listener"
#define CLIENT_LABEL "agentbox-helper-channel-1 client"
/* The whole handshake, from accept: a genuine host answers in a round trip. */
#define HANDSHAKE_MS 10000
#define MAX_ID 256

/* ---- SHA-256 (FIPS 180-4) and HMAC (RFC 2104): the helper links libc only ---- */

struct sha256 {
    uint32_t h[8];
    unsigned char block[64];
    size_t used;
    uint64_t bytes;
};

static const uint32_t K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, int n) { return x >> n | x << (32 - n); }

static void sha256_block(struct sha256 *s, const unsigned char *p) {
    uint32_t w[64], v[8];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ w[i - 15] >> 3;
        uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ w[i - 2] >> 10;
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    memcpy(v, s->h, sizeof v);
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = v[7] + (ror(v[4], 6) ^ ror(v[4], 11) ^ ror(v[4], 25)) + ((v[4] & v[5]) ^ (~v[4] & v[6])) + K[i] + w[i];
        uint32_t t2 = (ror(v[0], 2) ^ ror(v[0], 13) ^ ror(v[0], 22)) + ((v[0] & v[1]) ^ (v[0] & v[2]) ^ (v[1] & v[2]));
        memmove(v + 1, v, 7 * sizeof v[0]);
        v[4] += t1;
        v[0] = t1 + t2;
    }
    for (int i = 0; i < 8; i++)
        s->h[i] += v[i];
}

static void sha256_init(struct sha256 *s) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, h0, sizeof h0);
    s->used = 0;
    s->bytes = 0;
}

static void sha256_update(struct sha256 *s, const void *data, size_t len) {
    const unsigned char *p = data;
    s->bytes += len;
    while (len > 0) {
        size_t take = 64 - s->used < len ? 64 - s->used : len;
        memcpy(s->block + s->used, p, take);
        s->used += take;
        p += take;
        len -= take;
        if (s->used == 64) {
            sha256_block(s, s->block);
            s->used = 0;
        }
    }
}

static void sha256_final(struct sha256 *s, unsigned char out[32]) {
    uint64_t bits = s->bytes * 8;
    unsigned char pad[72] = {0x80};
    size_t padlen = (s->used < 56 ? 56 : 120) - s->used;
    for (int i = 0; i < 8; i++)
        pad[padlen + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(s, pad, padlen + 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(s->h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(s->h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(s->h[i] >> 8);
        out[4 * i + 3] = (unsigned char)s->h[i];
    }
}

/* HMAC-SHA256 with a key of CHANNEL_KEY_BYTES (shorter than a block: used as it is, zero-padded). */
static void hmac_sha256(const unsigned char key[CHANNEL_KEY_BYTES], const void *msg, size_t len, unsigned char out[32]) {
    unsigned char pad[64], inner[32];
    struct sha256 s;
    memset(pad, 0x36, sizeof pad);
    for (int i = 0; i < CHANNEL_KEY_BYTES; i++)
        pad[i] ^= key[i];
    sha256_init(&s);
    sha256_update(&s, pad, sizeof pad);
    sha256_update(&s, msg, len);
    sha256_final(&s, inner);
    for (int i = 0; i < 64; i++)
        pad[i] ^= 0x36 ^ 0x5c;
    sha256_init(&s);
    sha256_update(&s, pad, sizeof pad);
    sha256_update(&s, inner, sizeof inner);
    sha256_final(&s, out);
}

/* ---- the key ---------------------------------------------------------------- */

static int hex_value(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* The channel key from `path`: 64 hex digits, then at most whitespace.  The file must be a regular
 * file that only its owner may read, and that owner must not be `workload` (the uid the helper
 * drops to, which runs every command): a key the workload can read proves nothing.  -1 (and why,
 * on stderr) otherwise. */
int load_channel_key(const char *path, long workload, unsigned char key[CHANNEL_KEY_BYTES]) {
    char text[CHANNEL_KEY_BYTES * 2 + 8];
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    const char *why = NULL;
    ssize_t n = -1;
    if (fd < 0 || fstat(fd, &st) < 0)
        why = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        why = "not a regular file";
    else if (st.st_mode & 077)
        why = "readable by others than its owner (it must be mode 0400 or 0600)";
    else if (workload >= 0 && (long)st.st_uid == workload)
        why = "owned by the workspace's user, who could read it";
    else if ((n = read(fd, text, sizeof text)) < 0)
        why = strerror(errno);
    if (fd >= 0)
        close(fd);
    for (int i = 0; !why && i < CHANNEL_KEY_BYTES; i++) {
        int hi = 2 * i + 1 < n ? hex_value(text[2 * i]) : -1, lo = hi >= 0 ? hex_value(text[2 * i + 1]) : -1;
        if (lo < 0)
            why = "not 64 hex digits";
        else
            key[i] = (unsigned char)(hi << 4 | lo);
    }
    for (ssize_t i = CHANNEL_KEY_BYTES * 2; !why && i < n; i++)
        if (text[i] != '\n' && text[i] != '\r' && text[i] != ' ')
            why = "not 64 hex digits";
    memset(text, 0, sizeof text);
    if (why) {
        memset(key, 0, CHANNEL_KEY_BYTES);
        fprintf(stderr, "agentbox-exec: no TCP channel: the key %s: %s\n", path, why);
        return -1;
    }
    return 0;
}

/* ---- the listener ------------------------------------------------------------- */

/* A TCP socket listening on every IPv4 address of the workspace at `port`; -1 (and why, on stderr). */
int listen_tcp(int port) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    addr.sin_addr.s_addr = htonl(INADDR_ANY);
    int one = 1;
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    /* SO_REUSEADDR lets a restarted sandbox listen past old TIME_WAIT connections; never SO_REUSEPORT,
     * which would let a workload of the same uid listen on the port beside the helper. */
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(s, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(s, 128) < 0) {
        fprintf(stderr, "agentbox-exec: no TCP channel on port %d: %s\n", port, strerror(errno));
        if (s >= 0)
            close(s);
        return -1;
    }
    return s;
}

/* Make the host learn this sandbox's link-layer address now: an empty UDP datagram to the default
 * gateway (the host's end of the workspace's bridge; the discard port).  Sending it takes an ARP
 * request, which carries our address, and the host updates its neighbour entry for our IP from it.
 * Without that, a host that knew the same IP under another MAC (a workspace removed a moment ago:
 * each workspace's MAC is its own, see network.py) keeps sending to the old one for up to a minute,
 * and the connections of the TCP channel time out meanwhile.  Whether the datagram is then refused
 * (the firewall, or nothing on port 9) does not matter. */
void announce_address(void) {
    FILE *f = fopen("/proc/net/route", "r");
    char line[256], iface[64];
    unsigned destination, gateway, flags;
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9)};
    int found = 0;
    if (!f)
        return;
    while (!found && fgets(line, sizeof line, f))
        found = sscanf(line, "%63s %x %x %x", iface, &destination, &gateway, &flags) == 4 && destination == 0 &&
                gateway != 0 && (flags & 2);   /* RTF_GATEWAY: the default route's next hop */
    fclose(f);
    if (!found)
        return;
    to.sin_addr.s_addr = gateway;   /* the table holds it in network order already */
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return;
    if (sendto(s, "", 0, MSG_DONTWAIT, (struct sockaddr *)&to, sizeof to) < 0) { /* best effort */ }
    close(s);
}

/* Exactly `len` bytes by `deadline` (now_ns()); -1 on silence, an early end or an error. */
static int read_by(int c, unsigned char *buf, size_t len, long long deadline) {
    while (len > 0) {
        long long left = (deadline - now_ns()) / 1000000;
        struct pollfd p = {.fd = c, .events = POLLIN};
        if (left <= 0)
            return -1;
        int ready = poll(&p, 1, (int)left);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0)
            return -1;
        ssize_t n = recv(c, buf, len, MSG_DONTWAIT);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}

static void proof(const unsigned char key[CHANNEL_KEY_BYTES], const char *label, const char *id,
                  const unsigned char *client_nonce, const unsigned char *listener_nonce, unsigned char out[32]) {
    unsigned char msg[64 + MAX_ID + 1 + 2 * NONCE_BYTES];
    size_t label_len = strlen(label), id_len = strlen(id), n = 0;
    memcpy(msg, label, label_len);
    n += label_len;
    memcpy(msg + n, id, id_len + 1);   /* with its NUL: the id's end is unambiguous */
    n += id_len + 1;
    memcpy(msg + n, client_nonce, NONCE_BYTES);
    n += NONCE_BYTES;
    memcpy(msg + n, listener_nonce, NONCE_BYTES);
    n += NONCE_BYTES;
    hmac_sha256(key, msg, n, out);
}

/* Whether the connection `c` just accepted proves it knows `key` for workspace `id` (after the
 * helper proved it too); 0 if so, -1 if it must be closed unread. */
int handshake(int c, const unsigned char key[CHANNEL_KEY_BYTES], const char *id) {
    unsigned char opening[MAGIC_BYTES + NONCE_BYTES], answer[NONCE_BYTES + 32], expected[32], said[32];
    long long deadline = now_ns() + HANDSHAKE_MS * 1000000LL;
    int one = 1;
    if (strlen(id) > MAX_ID)
        return -1;
    /* Every frame and answer goes at once: without this, a frame's second write waits for the
     * host's delayed ACK of the first (up to 40 ms). */
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (read_by(c, opening, sizeof opening, deadline) < 0 || memcmp(opening, MAGIC, MAGIC_BYTES) != 0)
        return -1;
    if (getrandom(answer, NONCE_BYTES, 0) != NONCE_BYTES)
        return -1;
    proof(key, LISTENER_LABEL, id, opening + MAGIC_BYTES, answer, answer + NONCE_BYTES);
    proof(key, CLIENT_LABEL, id, opening + MAGIC_BYTES, answer, expected);
    if (write_all(c, (const char *)answer, sizeof answer) < 0 || read_by(c, said, sizeof said, deadline) < 0)
        return -1;
    unsigned char differ = 0;   /* in constant time: how much of a proof is right must not show */
    for (size_t i = 0; i < sizeof said; i++)
        differ |= (unsigned char)(said[i] ^ expected[i]);
    return differ ? -1 : 0;
}
