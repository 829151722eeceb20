/* LD_PRELOAD shim: a wildcard bind() (0.0.0.0 or [::]) becomes a bind to $ADRENALINE_BIND_HOST.
 *
 * Why (issue 18 defect 11): Mooncake 0.3.13 binds its P2P handshake listener to INADDR_ANY and its TCP data
 * listener to [::] (v6_only false) whatever host `initialize()` is given, with no knob (docs/chaos.md). The
 * launcher preloads this into every server process so that each listening socket is on the instance's host.
 * Only wildcard binds change; a bind to a named address, AF_UNIX and every other call are untouched.
 * IPv4 host on an AF_INET6 socket: the v4-mapped address (::ffff:a.b.c.d) when the socket is dual-stack,
 * ::1 for a loopback host when it is v6-only, else unchanged. Built by adrenaline_sgl/support/bind_host.py.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

typedef int (*bind_fn)(int, const struct sockaddr *, socklen_t);

static int real_bind(int fd, const struct sockaddr *addr, socklen_t len) {
    static bind_fn next = NULL;
    if (next == NULL)
        next = (bind_fn)dlsym(RTLD_NEXT, "bind");
    return next(fd, addr, len);
}

static int bind_v4(int fd, const struct sockaddr_in *in, const char *host) {
    struct sockaddr_in copy = *in;
    if (inet_pton(AF_INET, host, &copy.sin_addr) != 1)
        return real_bind(fd, (const struct sockaddr *)in, sizeof *in);
    return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
}

static int bind_v6(int fd, const struct sockaddr_in6 *in6, socklen_t len, const char *host) {
    struct sockaddr_in6 copy = *in6;
    struct in_addr v4;
    int v6only = 0;
    socklen_t optlen = sizeof v6only;
    if (inet_pton(AF_INET6, host, &copy.sin6_addr) == 1)
        return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
    if (inet_pton(AF_INET, host, &v4) != 1)
        return real_bind(fd, (const struct sockaddr *)in6, len);
    getsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &optlen);
    if (!v6only) {
        memset(&copy.sin6_addr, 0, sizeof copy.sin6_addr);
        copy.sin6_addr.s6_addr[10] = 0xff;
        copy.sin6_addr.s6_addr[11] = 0xff;
        memcpy(&copy.sin6_addr.s6_addr[12], &v4, 4);
    } else if ((ntohl(v4.s_addr) >> 24) == 127) {
        copy.sin6_addr = in6addr_loopback;
    } else {
        return real_bind(fd, (const struct sockaddr *)in6, len);
    }
    return real_bind(fd, (const struct sockaddr *)&copy, sizeof copy);
}

int bind(int fd, const struct sockaddr *addr, socklen_t len) {
    const char *host = getenv("ADRENALINE_BIND_HOST");
    if (host == NULL || *host == '\0' || addr == NULL)
        return real_bind(fd, addr, len);
    if (addr->sa_family == AF_INET && len >= (socklen_t)sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        if (in->sin_addr.s_addr == htonl(INADDR_ANY))
            return bind_v4(fd, in, host);
    } else if (addr->sa_family == AF_INET6 && len >= (socklen_t)sizeof(struct sockaddr_in6)) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)addr;
        if (IN6_IS_ADDR_UNSPECIFIED(&in6->sin6_addr))
            return bind_v6(fd, in6, len, host);
    }
    return real_bind(fd, addr, len);
}
