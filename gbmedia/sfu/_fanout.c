/* Native fan-out: one incoming RTP packet to many subscribers in one call.
 *
 * The per-packet, per-subscriber work of forwarding (header rewrite, SRTP protect,
 * keeping the clear packet for NACK answers, the send) is what limits how many
 * subscribers one core serves; in Python it costs several microseconds per
 * subscriber. Here it is a memcpy, an AES pass and a share of one sendmmsg.
 *
 * The decisions (which layer, paused, waiting for a keyframe, the numbering) stay in
 * Python (gbmedia/sfu/forwarder.py): it hands a "plan" per subscriber, the small
 * rewrite parameters, and this module does the rest. The Python path is the
 * reference: tests/sfu/test_fanout.py requires byte-identical results.
 *
 * SRTP is Debian's libsrtp 2 (libsrtp2-dev), keyed with the same DTLS-SRTP keys
 * aiortc derives (see aiortc_adapter.native_session). The GIL is held throughout:
 * the socket is non-blocking, and the static buffers below rely on it.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <srtp2/srtp.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_PACKET 4096                         /* clear RTP larger than this is not forwarded (UDP over the internet: ~1200) */
#define SLOT_SIZE (MAX_PACKET + SRTP_MAX_TRAILER_LEN + 16)
#define BATCH 64                                /* datagrams per sendmmsg */

static PyObject *FanoutError;

/* --- Session: one subscriber transport's outbound SRTP context ---------------------- */

typedef struct {
    PyObject_HEAD
    srtp_t srtp;
    int profile;
} SessionObject;

static void Session_dealloc(SessionObject *self) {
    if (self->srtp != NULL) {
        srtp_dealloc(self->srtp);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Session_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"key", "profile", NULL};
    Py_buffer key;
    int profile;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "y*i", kwlist, &key, &profile)) {
        return NULL;
    }
    srtp_policy_t policy;
    memset(&policy, 0, sizeof(policy));
    if (srtp_crypto_policy_set_from_profile_for_rtp(&policy.rtp, (srtp_profile_t)profile) != srtp_err_status_ok ||
        srtp_crypto_policy_set_from_profile_for_rtcp(&policy.rtcp, (srtp_profile_t)profile) != srtp_err_status_ok) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "unsupported SRTP profile %d", profile);
        return NULL;
    }
    Py_ssize_t want = srtp_profile_get_master_key_length((srtp_profile_t)profile) +
                      srtp_profile_get_master_salt_length((srtp_profile_t)profile);
    if (key.len != want) {
        PyBuffer_Release(&key);
        PyErr_Format(PyExc_ValueError, "SRTP key and salt must be %zd bytes, not %zd", want, key.len);
        return NULL;
    }
    unsigned char material[64];
    memcpy(material, key.buf, key.len);
    PyBuffer_Release(&key);
    policy.ssrc.type = ssrc_any_outbound;
    policy.key = material;
    policy.window_size = 1024;
    policy.allow_repeat_tx = 1; /* NACK answers resend the same index */
    policy.next = NULL;
    SessionObject *self = (SessionObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    srtp_err_status_t status = srtp_create(&self->srtp, &policy);
    memset(material, 0, sizeof(material));
    if (status != srtp_err_status_ok) {
        self->srtp = NULL;
        Py_DECREF(self);
        PyErr_Format(FanoutError, "srtp_create failed (%d)", (int)status);
        return NULL;
    }
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
    srtp_err_status_t status = srtp_protect(self->srtp, one_slot, &len);
    if (status != srtp_err_status_ok) {
        PyErr_Format(FanoutError, "srtp_protect failed (%d)", (int)status);
        return NULL;
    }
    return PyBytes_FromStringAndSize((const char *)one_slot, len);
}

static PyMethodDef Session_methods[] = {
    {"protect", (PyCFunction)Session_protect, METH_O, "SRTP-protect one RTP packet (for tests and NACK answers)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SessionType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gbmedia.sfu._fanout.Session",
    .tp_basicsize = sizeof(SessionObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Session(key, profile): outbound SRTP for one DTLS transport (key = master key + salt).",
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

/* --- the fan-out ---------------------------------------------------------------------- */

static unsigned char slots[BATCH][SLOT_SIZE];
static struct mmsghdr messages[BATCH];
static struct iovec vectors[BATCH];

/* Send messages[0..count); returns how many went (the rest are dropped, as UDP may). */
static int flush(int fd, int count) {
    int done = 0;
    while (done < count) {
        int sent = sendmmsg(fd, messages + done, (unsigned int)(count - done), MSG_DONTWAIT);
        if (sent < 0) {
            if (errno == EINTR) {
                continue;
            }
            break; /* EAGAIN (a full send buffer), or the address went away */
        }
        if (sent == 0) {
            break;
        }
        done += sent;
    }
    return done;
}

static inline void put16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void put32(unsigned char *p, unsigned long v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

/* send(fd, body, padded, marker, plans) -> (sent, protected)
 *
 * plans: a list of tuples (session, sockaddr, history, payload_type, seq, ts, ssrc, block),
 * one per subscriber. For each: the clear packet (12-byte header + block + body) goes into
 * history[seq % len(history)] (a list whose length is a power of two), is protected with
 * session and queued for sockaddr; every BATCH packets, and at the end, one sendmmsg.
 */
static PyObject *fanout_send(PyObject *module, PyObject *args) {
    int fd, padded, marker;
    Py_buffer body;
    PyObject *plans;
    if (!PyArg_ParseTuple(args, "iy*ppO!", &fd, &body, &padded, &marker, &PyList_Type, &plans)) {
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(plans);
    int queued = 0, sent = 0, protected_count = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *plan = PyList_GET_ITEM(plans, i);
        if (!PyTuple_CheckExact(plan) || PyTuple_GET_SIZE(plan) != 8 ||
            !PyObject_TypeCheck(PyTuple_GET_ITEM(plan, 0), &SessionType) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(plan, 1)) || !PyList_CheckExact(PyTuple_GET_ITEM(plan, 2)) ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(plan, 7))) {
            PyErr_SetString(PyExc_TypeError,
                            "a plan is (Session, sockaddr bytes, history list, pt, seq, ts, ssrc, block bytes)");
            goto fail;
        }
        SessionObject *session = (SessionObject *)PyTuple_GET_ITEM(plan, 0);
        PyObject *address = PyTuple_GET_ITEM(plan, 1);
        PyObject *history = PyTuple_GET_ITEM(plan, 2);
        unsigned long pt = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(plan, 3));
        unsigned long seq = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(plan, 4));
        unsigned long ts = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(plan, 5));
        unsigned long ssrc = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(plan, 6));
        if (PyErr_Occurred()) {
            goto fail;
        }
        PyObject *block = PyTuple_GET_ITEM(plan, 7);
        Py_ssize_t block_len = PyBytes_GET_SIZE(block);
        Py_ssize_t total = 12 + block_len + body.len;
        Py_ssize_t slots_in_history = PyList_GET_SIZE(history);
        if (total > MAX_PACKET || slots_in_history == 0 || (slots_in_history & (slots_in_history - 1)) != 0) {
            continue; /* too large to protect here; a history that is not a power of two is a bug upstream */
        }
        PyObject *clear = PyBytes_FromStringAndSize(NULL, total);
        if (clear == NULL) {
            goto fail;
        }
        unsigned char *p = (unsigned char *)PyBytes_AS_STRING(clear);
        p[0] = (unsigned char)(0x80 | (block_len ? 0x10 : 0) | (padded ? 0x20 : 0));
        p[1] = (unsigned char)((marker ? 0x80 : 0) | (pt & 0x7F));
        put16(p + 2, (unsigned)(seq & 0xFFFF));
        put32(p + 4, ts & 0xFFFFFFFFUL);
        put32(p + 8, ssrc & 0xFFFFFFFFUL);
        memcpy(p + 12, PyBytes_AS_STRING(block), block_len);
        memcpy(p + 12 + block_len, body.buf, body.len);
        /* history[seq & mask] = clear (the list steals the reference; the old item is released) */
        PyList_SetItem(history, (Py_ssize_t)(seq & (unsigned long)(slots_in_history - 1)), clear);

        unsigned char *slot = slots[queued];
        memcpy(slot, p, total);
        int len = (int)total;
        if (srtp_protect(session->srtp, slot, &len) != srtp_err_status_ok) {
            continue;
        }
        protected_count++;
        vectors[queued].iov_base = slot;
        vectors[queued].iov_len = (size_t)len;
        struct msghdr *header = &messages[queued].msg_hdr;
        memset(header, 0, sizeof(*header));
        header->msg_name = PyBytes_AS_STRING(address);
        header->msg_namelen = (socklen_t)PyBytes_GET_SIZE(address);
        header->msg_iov = &vectors[queued];
        header->msg_iovlen = 1;
        if (++queued == BATCH) {
            sent += flush(fd, queued);
            queued = 0;
        }
    }
    if (queued) {
        sent += flush(fd, queued);
    }
    PyBuffer_Release(&body);
    return Py_BuildValue("ii", sent, protected_count);
fail:
    PyBuffer_Release(&body);
    return NULL;
}

/* resend(fd, session, sockaddr, clear) -> bool: one packet (a NACK answer) */
static PyObject *fanout_resend(PyObject *module, PyObject *args) {
    int fd;
    SessionObject *session;
    Py_buffer address, data;
    if (!PyArg_ParseTuple(args, "iO!y*y*", &fd, &SessionType, &session, &address, &data)) {
        return NULL;
    }
    int ok = 0;
    if (data.len >= 12 && data.len <= MAX_PACKET) {
        int len = (int)data.len;
        memcpy(one_slot, data.buf, len);
        if (srtp_protect(session->srtp, one_slot, &len) == srtp_err_status_ok) {
            ok = sendto(fd, one_slot, (size_t)len, MSG_DONTWAIT, (const struct sockaddr *)address.buf,
                        (socklen_t)address.len) == len;
        }
    }
    PyBuffer_Release(&address);
    PyBuffer_Release(&data);
    return PyBool_FromLong(ok);
}

static PyMethodDef fanout_methods[] = {
    {"send", fanout_send, METH_VARARGS, "Rewrite, protect, keep and send one packet to many subscribers."},
    {"resend", fanout_resend, METH_VARARGS, "Protect and send one kept packet (a NACK answer)."},
    {"address", fanout_address, METH_VARARGS, "A sockaddr (bytes) for host, port."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef fanout_module = {
    PyModuleDef_HEAD_INIT, "_fanout", "Native RTP fan-out (see gbmedia/sfu/fanout.py).", -1, fanout_methods,
};

PyMODINIT_FUNC PyInit__fanout(void) {
    if (srtp_init() != srtp_err_status_ok) {
        PyErr_SetString(PyExc_ImportError, "srtp_init failed");
        return NULL;
    }
    if (PyType_Ready(&SessionType) < 0) {
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
    PyModule_AddIntConstant(module, "BATCH", BATCH);
    PyModule_AddIntConstant(module, "MAX_PACKET", MAX_PACKET);
    return module;
}
