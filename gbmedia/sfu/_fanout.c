/* Native fan-out: one incoming RTP packet to many subscribers in one call.
 *
 * The per-packet, per-subscriber work of forwarding (renumbering, header rewrite, SRTP
 * protect, keeping the packet for NACK answers, the send) is what limits how many
 * subscribers one core serves; in Python it costs several microseconds per subscriber.
 * Here a subscriber's down track is a Downlink: its numbering, its SRTP session, its
 * address and its NACK history live in C, and forward() walks a track's downlinks for
 * each incoming packet and sends the whole batch with sendmmsg on the shared socket.
 *
 * The decisions (which layer, paused, waiting for a keyframe) stay in Python
 * (gbmedia/sfu/forwarder.py): it sets a downlink's layer (-1: send nothing) when they
 * change, and forward() sends to the downlinks on the packet's layer. The Python path
 * is the reference: tests/sfu/test_fanout.py requires byte-identical results.
 *
 * SRTP is libsrtp 2. By default the one the pylibsrtp wheel (aiortc's dependency)
 * carries, libsrtp 2.7 on OpenSSL: use_library() resolves its functions by name, and
 * it protects a 1,200-byte packet in about 2 us here. Debian's libsrtp2 (2.5, on NSS),
 * which this module links against and falls back to, takes about 4.8 us. The two share
 * the 2.x API and srtp_policy_t (the headers are Debian's libsrtp2-dev). The GIL is held
 * throughout: the socket is non-blocking, and the static buffers below rely on it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <netinet/in.h>
#include <srtp2/srtp.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_PACKET 4096                         /* clear RTP larger than this is not forwarded (UDP over the internet: ~1200) */
#define SLOT_SIZE (MAX_PACKET + SRTP_MAX_TRAILER_LEN + 16)
#define BATCH 64                                /* datagrams per sendmmsg */
#define HISTORY 256                             /* packets kept per downlink for NACK answers (forwarder.HISTORY_SIZE) */

static PyObject *FanoutError;

/* --- the SRTP library ----------------------------------------------------------------- */

typedef struct {
    srtp_err_status_t (*init)(void);
    srtp_err_status_t (*create)(srtp_t *, const srtp_policy_t *);
    srtp_err_status_t (*dealloc)(srtp_t);
    srtp_err_status_t (*protect)(srtp_t, void *, int *);
    srtp_err_status_t (*policy_rtp)(srtp_crypto_policy_t *, srtp_profile_t);
    srtp_err_status_t (*policy_rtcp)(srtp_crypto_policy_t *, srtp_profile_t);
    unsigned int (*key_length)(srtp_profile_t);
    unsigned int (*salt_length)(srtp_profile_t);
    const char *(*version)(void);
    srtp_err_status_t (*unprotect)(srtp_t, void *, int *);
} SrtpLibrary;

static SrtpLibrary lib = {
    srtp_init, srtp_create, srtp_dealloc, srtp_protect, srtp_crypto_policy_set_from_profile_for_rtp,
    srtp_crypto_policy_set_from_profile_for_rtcp, srtp_profile_get_master_key_length,
    srtp_profile_get_master_salt_length, srtp_get_version_string, srtp_unprotect,
};
static char library_name[512] = "libsrtp2 (system)";
static Py_ssize_t sessions_alive = 0;

/* use_library(path) -> version: protect with the libsrtp 2 inside the shared object at path */
static PyObject *fanout_use_library(PyObject *module, PyObject *args) {
    const char *path;
    if (!PyArg_ParseTuple(args, "s", &path)) {
        return NULL;
    }
    if (sessions_alive) {
        PyErr_SetString(FanoutError, "sessions exist: choose the SRTP library before making any");
        return NULL;
    }
    void *handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (handle == NULL) {
        PyErr_Format(FanoutError, "cannot load %s: %s", path, dlerror());
        return NULL;
    }
    SrtpLibrary found;
    const char *names[] = {"srtp_init", "srtp_create", "srtp_dealloc", "srtp_protect",
                           "srtp_crypto_policy_set_from_profile_for_rtp",
                           "srtp_crypto_policy_set_from_profile_for_rtcp", "srtp_profile_get_master_key_length",
                           "srtp_profile_get_master_salt_length", "srtp_get_version_string", "srtp_unprotect"};
    void **slots_of_found = (void **)&found;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        slots_of_found[i] = dlsym(handle, names[i]);
        if (slots_of_found[i] == NULL) {
            dlclose(handle);
            PyErr_Format(FanoutError, "%s has no %s: not libsrtp 2", path, names[i]);
            return NULL;
        }
    }
    const char *version = found.version();
    /* srtp_init fails once done (its debug module is loaded twice): pylibsrtp did it at import.
     * What must work is making a session, which a library that was never initialised refuses. */
    found.init();
    srtp_policy_t policy;
    unsigned char material[30] = {0};
    srtp_t probe = NULL;
    memset(&policy, 0, sizeof(policy));
    policy.ssrc.type = ssrc_any_outbound;
    policy.key = material;
    policy.window_size = 1024;
    int usable = strncmp(version, "libsrtp2 2.", 11) == 0 &&
                 found.policy_rtp(&policy.rtp, srtp_profile_aes128_cm_sha1_80) == srtp_err_status_ok &&
                 found.policy_rtcp(&policy.rtcp, srtp_profile_aes128_cm_sha1_80) == srtp_err_status_ok &&
                 found.create(&probe, &policy) == srtp_err_status_ok;
    if (probe != NULL) {
        found.dealloc(probe);
    }
    if (!usable) {
        dlclose(handle);
        PyErr_Format(FanoutError, "%s carries %s, not a usable libsrtp 2", path, version);
        return NULL;
    }
    lib = found; /* the handle stays open for the life of the process */
    snprintf(library_name, sizeof(library_name), "%s (%s)", version, path);
    return PyUnicode_FromString(version);
}

static PyObject *fanout_library(PyObject *module, PyObject *unused) {
    return PyUnicode_FromString(library_name);
}

/* --- Session: one transport's outbound SRTP context (a subscriber's), or its inbound one --- */

typedef struct {
    PyObject_HEAD
    srtp_t srtp;
    int profile;
} SessionObject;

static void Session_dealloc(SessionObject *self) {
    if (self->srtp != NULL) {
        lib.dealloc(self->srtp);
        sessions_alive--;
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "profile", "inbound", NULL};
    Py_buffer key;
    int profile;
    int inbound = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*i|p", kwlist, &key, &profile, &inbound)) {
        return NULL;
    }
    srtp_policy_t policy;
    memset(&policy, 0, sizeof(policy));
    if (lib.policy_rtp(&policy.rtp, (srtp_profile_t)profile) != srtp_err_status_ok ||
        lib.policy_rtcp(&policy.rtcp, (srtp_profile_t)profile) != srtp_err_status_ok) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "unsupported SRTP profile %d", profile);
        return NULL;
    }
    Py_ssize_t want = lib.key_length((srtp_profile_t)profile) + lib.salt_length((srtp_profile_t)profile);
    if (key.len != want) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "SRTP key and salt must be %zd bytes, not %zd", want, key.len);
        return NULL;
    }
    unsigned char material[64];
    memcpy(material, key.buf, key.len);
    PyBuffer_Release(&key);
    policy.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    policy.key = material;
    /* A sender's window only has to reach back as far as the NACK history: libsrtp shifts the whole
     * window's bit vector for every packet protected, so 1024 (aiortc's) cost 4x this in the profile.
     * A receiver's is aiortc's own (1.16.0's _setup_srtp): the replay window decides which late
     * packets (NACK repairs) are still taken, and that must not change with the path. */
    policy.window_size = inbound ? 1024 : HISTORY;
    policy.allow_repeat_tx = 1; /* NACK answers resend the same index (and aiortc sets it on both) */
    policy.next = NULL;
    SessionObject *self = (SessionObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    srtp_err_status_t status = lib.create(&self->srtp, &policy);
    memset(material, 0, sizeof(material));
    if (status != srtp_err_status_ok) {
        self->srtp = NULL;
        Py_DECREF(self);
        PyErr_Format(FanoutError, "srtp_create failed (%d)", (int)status);
        return NULL;
    }
    sessions_alive++;
    self->profile = profile;
    return (PyObject *)self;
}

static unsigned char one_slot[SLOT_SIZE];

static PyObject *Session_protect(SessionObject *self, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (data.len < 12 || data.len > MAX_PACKET) {
        PyBuffer_Release(&data);
        PyErr_SetString(PyExc_ValueError, "not an RTP packet of 12 to 4096 bytes");
        return NULL;
    }
    int len = (int)data.len;
    memcpy(one_slot, data.buf, len);
    PyBuffer_Release(&data);
    srtp_err_status_t status = lib.protect(self->srtp, one_slot, &len);
    if (status != srtp_err_status_ok) {
        PyErr_Format(FanoutError, "srtp_protect failed (%d)", (int)status);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)one_slot, len);
}

/* unprotect(packet) -> the clear packet, or None where libsrtp refuses it (not authentic, replayed,
 * too short or too long for a slot): the receive path drops those, as aiortc's does. */
static PyObject *Session_unprotect(SessionObject *self, PyObject *arg) {
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    if (data.len < 12 || data.len > (Py_ssize_t)sizeof(one_slot)) {
        PyBuffer_Release(&data);
        Py_RETURN_NONE;
    }
    int len = (int)data.len;
    memcpy(one_slot, data.buf, len);
    PyBuffer_Release(&data);
    if (lib.unprotect(self->srtp, one_slot, &len) != srtp_err_status_ok) {
        Py_RETURN_NONE;
    }
    return PyBytes_FromStringAndSize((const char *)one_slot, len);
}

static PyMethodDef Session_methods[] = {
    {"protect", (PyCFunction)Session_protect, METH_O, "SRTP-protect one RTP packet (for tests)."},
    {"unprotect", (PyCFunction)Session_unprotect, METH_O,
     "The clear RTP packet of one SRTP packet (inbound sessions), or None when it is refused."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gbmedia.sfu._fanout.Session",
    .tp_basicsize = sizeof(SessionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Session(key, profile, inbound=False): outbound (or inbound) SRTP for one DTLS transport "
              "(key = master key + salt).",
    .tp_new = Session_new,
    .tp_dealloc = (destructor)Session_dealloc,
    .tp_methods = Session_methods,
};

/* --- addresses ----------------------------------------------------------------------- */

static PyObject *fanout_address(PyObject *module, PyObject *args) {
    const char *host;
    int port;
    if (!PyArg_ParseTuple(args, "si", &host, &port)) {
        return NULL;
    }
    if (port < 0 || port > 65535) {
        PyErr_SetString(PyExc_ValueError, "port out of range");
        return NULL;
    }
    struct sockaddr_in in4;
    memset(&in4, 0, sizeof(in4));
    if (inet_pton(AF_INET, host, &in4.sin_addr) == 1) {
        in4.sin_family = AF_INET;
        in4.sin_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&in4, sizeof(in4));
    }
    struct sockaddr_in6 in6;
    memset(&in6, 0, sizeof(in6));
    if (inet_pton(AF_INET6, host, &in6.sin6_addr) == 1) {
        in6.sin6_family = AF_INET6;
        in6.sin6_port = htons((uint16_t)port);
        return PyBytes_FromStringAndSize((const char *)&in6, sizeof(in6));
    }
    PyErr_Format(PyExc_ValueError, "not an IP address: %s", host);
    return NULL;
}

/* --- Downlink: one down track's sending state ------------------------------------------- */

typedef struct {
    PyObject *body;  /* the incoming packet's payload and padding (shared by every downlink) */
    PyObject *block; /* the header extension block for this downlink's layout (shared too) */
    unsigned char header[12];
} Kept;

typedef struct {
    PyObject_HEAD
    /* where and how it sends (configure) */
    SessionObject *session;
    PyObject *address; /* sockaddr bytes */
    int fd;
    unsigned payload_type;
    uint32_t ssrc;
    int layout; /* index into forward()'s blocks */
    /* what it forwards: the packets of this layer; -1 none (the decisions are Python's) */
    int layer;
    /* numbering: each source (SSRC) continues from the last packet sent */
    int has_source;
    uint32_t source_ssrc;
    uint16_t seq_offset;
    uint32_t ts_offset;
    uint32_t gap; /* timestamp step at a source change: about one frame */
    uint16_t last_seq;
    uint32_t last_ts;
    /* counters: for stats, and for the sender reports (taken by Python, see take_counts) */
    unsigned long long packets_out;
    unsigned long long bytes_out;
    unsigned long long resent;
    unsigned long long unreported_packets;
    unsigned long long unreported_octets;
    unsigned long long last_ntp;
    Kept history[HISTORY];
} DownlinkObject;

static void Downlink_clear_history(DownlinkObject *self) {
    for (int i = 0; i < HISTORY; i++) {
        Py_CLEAR(self->history[i].body);
        Py_CLEAR(self->history[i].block);
    }
}

static void Downlink_dealloc(DownlinkObject *self) {
    Downlink_clear_history(self);
    Py_CLEAR(self->session);
    Py_CLEAR(self->address);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Downlink_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"last_seq", "last_ts", "gap", NULL};
    unsigned long last_seq, last_ts, gap;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "kkk", kwlist, &last_seq, &last_ts, &gap)) {
        return NULL;
    }
    if (last_seq > 0xFFFF || last_ts > 0xFFFFFFFFUL || gap > 0xFFFFFFFFUL) {
        PyErr_SetString(PyExc_ValueError, "last_seq is 16 bits, last_ts and gap 32");
        return NULL;
    }
    DownlinkObject *self = (DownlinkObject *)type->tp_alloc(type, 0); /* zeroed: no history, no session */
    if (self == NULL) {
        return NULL;
    }
    self->fd = -1;
    self->layer = -1;
    self->last_seq = (uint16_t)last_seq;
    self->last_ts = (uint32_t)last_ts;
    self->gap = (uint32_t)gap;
    return (PyObject *)self;
}

/* configure(session, address, fd, payload_type, ssrc, layout) */
static PyObject *Downlink_configure(DownlinkObject *self, PyObject *args) {
    SessionObject *session;
    PyObject *address;
    int fd, layout;
    unsigned long payload_type, ssrc;
    if (!PyArg_ParseTuple(args, "O!O!ikki", &SessionType, &session, &PyBytes_Type, &address, &fd, &payload_type,
                          &ssrc, &layout)) {
        return NULL;
    }
    if (payload_type > 127 || ssrc > 0xFFFFFFFFUL || layout < 0) {
        PyErr_SetString(PyExc_ValueError, "payload type is 7 bits, ssrc 32, layout an index");
        return NULL;
    }
    Py_INCREF(session);
    Py_XSETREF(self->session, session);
    Py_INCREF(address);
    Py_XSETREF(self->address, address);
    self->fd = fd;
    self->payload_type = (unsigned)payload_type;
    self->ssrc = (uint32_t)ssrc;
    self->layout = layout;
    Py_RETURN_NONE;
}

/* Build the clear packet kept in `kept` into out; returns its length. */
static int build_clear(const Kept *kept, unsigned char *out) {
    Py_ssize_t block_len = PyBytes_GET_SIZE(kept->block), body_len = PyBytes_GET_SIZE(kept->body);
    memcpy(out, kept->header, 12);
    memcpy(out + 12, PyBytes_AS_STRING(kept->block), block_len);
    memcpy(out + 12 + block_len, PyBytes_AS_STRING(kept->body), body_len);
    return (int)(12 + block_len + body_len);
}

static const Kept *kept_for(DownlinkObject *self, unsigned long seq) {
    const Kept *kept = &self->history[seq & (HISTORY - 1)];
    if (kept->body == NULL || ((unsigned)kept->header[2] << 8 | kept->header[3]) != seq) {
        return NULL;
    }
    return kept;
}

/* kept(seq) -> bytes | None: the clear packet sent with this sequence number, if still kept */
static PyObject *Downlink_kept(DownlinkObject *self, PyObject *arg) {
    unsigned long seq = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) {
        return NULL;
    }
    const Kept *kept = kept_for(self, seq);
    if (kept == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *clear = PyBytes_FromStringAndSize(NULL, 12 + PyBytes_GET_SIZE(kept->block) + PyBytes_GET_SIZE(kept->body));
    if (clear != NULL) {
        build_clear(kept, (unsigned char *)PyBytes_AS_STRING(clear));
    }
    return clear;
}

/* resend(seqs) -> how many went: NACK answers, from the history, as originals (no RTX) */
static PyObject *Downlink_resend(DownlinkObject *self, PyObject *arg) {
    PyObject *seqs = PySequence_Fast(arg, "resend takes a list of sequence numbers");
    if (seqs == NULL) {
        return NULL;
    }
    long count = 0;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seqs);
    for (Py_ssize_t i = 0; i < n && self->session != NULL; i++) {
        unsigned long seq = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(seqs, i));
        if (PyErr_Occurred()) {
            Py_DECREF(seqs);
            return NULL;
        }
        const Kept *kept = kept_for(self, seq);
        if (kept == NULL) {
            continue;
        }
        int len = build_clear(kept, one_slot);
        if (len > MAX_PACKET || lib.protect(self->session->srtp, one_slot, &len) != srtp_err_status_ok) {
            continue;
        }
        if (sendto(self->fd, one_slot, (size_t)len, MSG_DONTWAIT, (const struct sockaddr *)PyBytes_AS_STRING(self->address),
                   (socklen_t)PyBytes_GET_SIZE(self->address)) == len) {
            count++;
        }
    }
    Py_DECREF(seqs);
    self->resent += (unsigned long long)count;
    self->unreported_packets += (unsigned long long)count;
    return PyLong_FromLong(count);
}

/* take_counts() -> (octets, packets, last_ts, last_ntp): sent since the last call, for sender reports */
static PyObject *Downlink_take_counts(DownlinkObject *self, PyObject *unused) {
    PyObject *counts = Py_BuildValue("KKkK", self->unreported_octets, self->unreported_packets,
                                     (unsigned long)self->last_ts, self->last_ntp);
    self->unreported_octets = self->unreported_packets = 0;
    return counts;
}

/* reset_source(): number the next packet on from the last one sent, whatever its source */
static PyObject *Downlink_reset_source(DownlinkObject *self, PyObject *unused) {
    self->has_source = 0;
    Py_RETURN_NONE;
}

static PyMethodDef Downlink_methods[] = {
    {"configure", (PyCFunction)Downlink_configure, METH_VARARGS,
     "configure(session, address, fd, payload_type, ssrc, layout): where and how it sends."},
    {"kept", (PyCFunction)Downlink_kept, METH_O, "The clear packet kept for a sequence number, or None."},
    {"resend", (PyCFunction)Downlink_resend, METH_O, "Answer a NACK from the history; returns how many went."},
    {"take_counts", (PyCFunction)Downlink_take_counts, METH_NOARGS,
     "(octets, packets, last_ts, last_ntp) since the last call, for sender reports."},
    {"reset_source", (PyCFunction)Downlink_reset_source, METH_NOARGS, "Rebase the numbering on the next packet."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef Downlink_members[] = {
    {"layer", T_INT, offsetof(DownlinkObject, layer), 0, "the layer it forwards; -1: none"},
    {"last_seq", T_USHORT, offsetof(DownlinkObject, last_seq), READONLY, "the last sequence number sent"},
    {"last_ts", T_UINT, offsetof(DownlinkObject, last_ts), READONLY, "the last RTP timestamp sent"},
    {"packets_out", T_ULONGLONG, offsetof(DownlinkObject, packets_out), READONLY, "packets forwarded"},
    {"bytes_out", T_ULONGLONG, offsetof(DownlinkObject, bytes_out), READONLY, "clear RTP bytes forwarded"},
    {"resent", T_ULONGLONG, offsetof(DownlinkObject, resent), READONLY, "NACK answers sent"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject DownlinkType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gbmedia.sfu._fanout.Downlink",
    .tp_basicsize = sizeof(DownlinkObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Downlink(last_seq, last_ts, gap): one down track's numbering, SRTP, address and NACK history.",
    .tp_new = Downlink_new,
    .tp_dealloc = (destructor)Downlink_dealloc,
    .tp_methods = Downlink_methods,
    .tp_members = Downlink_members,
};

/* --- the fan-out ---------------------------------------------------------------------- */

static unsigned char slots[BATCH][SLOT_SIZE];
static struct mmsghdr messages[BATCH];
static struct iovec vectors[BATCH];

/* Send messages[0..count) on fd; returns how many went (the rest are dropped, as UDP may). */
static int flush(int fd, int count) {
    int next = 0, delivered = 0;
    while (next < count) {
        int sent = sendmmsg(fd, messages + next, (unsigned int)(count - next), MSG_DONTWAIT);
        if (sent > 0) {
            next += sent;
            delivered += sent;
            continue;
        }
        if (sent < 0 && errno == EINTR) {
            continue;
        }
        if (sent == 0 || errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS || errno == EBADF ||
            errno == ENOTSOCK) {
            break; /* a full send buffer (or no socket): the rest of this batch is dropped, and counted */
        }
        next++; /* this datagram's address is refused (unreachable, filtered): skip it, send the others */
    }
    return delivered;
}

static inline void put16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* forward(downlinks, layer, ssrc, seq, ts, marker, padded, body, blocks, payload_size, ntp)
 *     -> (forwarded, bytes, dropped)
 *
 * One incoming packet (its source numbering, flags, body shared by all) to every downlink in
 * the list whose layer is `layer`: renumbered (a new source continues from the last packet
 * sent), kept for NACKs, protected with its session and sent, BATCH datagrams per sendmmsg.
 * blocks[i] is the header extension block for layout i (configure). `dropped` counts
 * datagrams a full send buffer refused.
 */
static PyObject *fanout_forward(PyObject *module, PyObject *args) {
    PyObject *links, *body, *blocks;
    int layer, marker, padded;
    unsigned long ssrc, seq, ts;
    unsigned long long payload_size, ntp;
    if (!PyArg_ParseTuple(args, "O!ikkkppO!O!KK", &PyList_Type, &links, &layer, &ssrc, &seq, &ts, &marker, &padded,
                          &PyBytes_Type, &body, &PyTuple_Type, &blocks, &payload_size, &ntp)) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(links), block_count = PyTuple_GET_SIZE(blocks);
    for (Py_ssize_t i = 0; i < block_count; i++) {
        if (!PyBytes_CheckExact(PyTuple_GET_ITEM(blocks, i))) {
            PyErr_SetString(PyExc_TypeError, "blocks are bytes");
            return NULL;
        }
    }
    Py_ssize_t body_len = PyBytes_GET_SIZE(body);
    int queued = 0, batch_fd = -1;
    long forwarded = 0, sent = 0;
    unsigned long long bytes = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        DownlinkObject *d = (DownlinkObject *)PyList_GET_ITEM(links, i);
        if (Py_TYPE(d) != &DownlinkType) {
            PyErr_SetString(PyExc_TypeError, "downlinks are Downlink objects");
            return NULL;
        }
        if (d->layer != layer || d->session == NULL || d->layout >= block_count) {
            continue;
        }
        PyObject *block = PyTuple_GET_ITEM(blocks, d->layout);
        Py_ssize_t block_len = PyBytes_GET_SIZE(block), total = 12 + block_len + body_len;
        if (total > MAX_PACKET) {
            continue;
        }
        if (!d->has_source || d->source_ssrc != (uint32_t)ssrc) { /* a new source continues the numbering */
            d->seq_offset = (uint16_t)(d->last_seq + 1 - seq);
            d->ts_offset = d->last_ts + d->gap - (uint32_t)ts;
            d->source_ssrc = (uint32_t)ssrc;
            d->has_source = 1;
        }
        uint16_t out_seq = (uint16_t)(seq + d->seq_offset);
        uint32_t out_ts = (uint32_t)ts + d->ts_offset;
        Kept *kept = &d->history[out_seq & (HISTORY - 1)];
        unsigned char *h = kept->header;
        h[0] = (unsigned char)(0x80 | (block_len ? 0x10 : 0) | (padded ? 0x20 : 0));
        h[1] = (unsigned char)((marker ? 0x80 : 0) | (d->payload_type & 0x7F));
        put16(h + 2, out_seq);
        put32(h + 4, out_ts);
        put32(h + 8, d->ssrc);
        Py_INCREF(body);
        Py_XSETREF(kept->body, body);
        Py_INCREF(block);
        Py_XSETREF(kept->block, block);
        d->last_seq = out_seq;
        d->last_ts = out_ts;
        d->last_ntp = ntp;
        d->packets_out++;
        d->bytes_out += (unsigned long long)total;
        d->unreported_packets++;
        d->unreported_octets += payload_size;
        forwarded++;
        bytes += (unsigned long long)total;

        if (queued && d->fd != batch_fd) { /* one sendmmsg per socket */
            sent += flush(batch_fd, queued);
            queued = 0;
        }
        batch_fd = d->fd;
        unsigned char *slot = slots[queued];
        int len = build_clear(kept, slot);
        if (lib.protect(d->session->srtp, slot, &len) != srtp_err_status_ok) {
            continue;
        }
        vectors[queued].iov_base = slot;
        vectors[queued].iov_len = (size_t)len;
        struct msghdr *header = &messages[queued].msg_hdr;
        memset(header, 0, sizeof(*header));
        header->msg_name = PyBytes_AS_STRING(d->address);
        header->msg_namelen = (socklen_t)PyBytes_GET_SIZE(d->address);
        header->msg_iov = &vectors[queued];
        header->msg_iovlen = 1;
        if (++queued == BATCH) {
            sent += flush(batch_fd, queued);
            queued = 0;
        }
    }
    if (queued) {
        sent += flush(batch_fd, queued);
    }
    return Py_BuildValue("lKl", forwarded, bytes, forwarded - sent);
}

static PyMethodDef fanout_methods[] = {
    {"forward", fanout_forward, METH_VARARGS, "Renumber, keep, protect and send one packet to many downlinks."},
    {"address", fanout_address, METH_VARARGS, "A sockaddr (bytes) for host, port."},
    {"use_library", fanout_use_library, METH_VARARGS, "Protect with the libsrtp 2 in this shared object."},
    {"library", fanout_library, METH_NOARGS, "Which libsrtp protects."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fanout_module = {
    PyModuleDef_HEAD_INIT, "_fanout", "Native RTP fan-out (see gbmedia/sfu/fanout.py).", -1, fanout_methods,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    if (lib.init() != srtp_err_status_ok) {
        PyErr_SetString(PyExc_ImportError, "srtp_init failed");
        return NULL;
    }
    if (PyType_Ready(&SessionType) < 0 || PyType_Ready(&DownlinkType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&fanout_module);
    if (module == NULL) {
        return NULL;
    }
    FanoutError = PyErr_NewException("gbmedia.sfu._fanout.Error", PyExc_RuntimeError, NULL);
    Py_INCREF(FanoutError);
    PyModule_AddObject(module, "Error", FanoutError);
    Py_INCREF(&SessionType);
    PyModule_AddObject(module, "Session", (PyObject *)&SessionType);
    Py_INCREF(&DownlinkType);
    PyModule_AddObject(module, "Downlink", (PyObject *)&DownlinkType);
    PyModule_AddIntConstant(module, "BATCH", BATCH);
    PyModule_AddIntConstant(module, "MAX_PACKET", MAX_PACKET);
    PyModule_AddIntConstant(module, "HISTORY", HISTORY);
    return module;
}
