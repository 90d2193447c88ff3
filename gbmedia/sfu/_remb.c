/* The receive-side bandwidth estimate (REMB) of a published track, in C.
 *
 * Every RTP packet a publisher sends goes through aiortc's RemoteBitrateEstimator
 * (aiortc/rate.py, adapted from webrtc.org: an inter-arrival filter, a Kalman
 * estimator of the queuing delay, an overuse detector and an AIMD rate control). In
 * Python that is some fifteen calls and a loop over the milliseconds between packets
 * (the rate counter's buckets): measured in a running node, 0.4 % of a core for one
 * 640x480 publisher (35-40 us per packet, the interpreter's caches cold after each
 * wake-up), a fifth of what a node spends on a publisher that nobody watches.
 *
 * Estimator.add() is that estimator, statement for statement: the same arithmetic in
 * the same order on doubles (Python's floats), Python's round() (half to even: rint),
 * int() (truncation), // and % on the 32-bit timestamps, so the same packets give the
 * same REMB values bit for bit. tests/sfu/test_remb.py drives both with the same
 * packets and requires equal results after every packet and equal state at the end.
 * The one difference: after a gap of more than a second, the rate counter clears its
 * window at once instead of one millisecond at a time (the same state).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#define WINDOW_MS 1000            /* RemoteBitrateEstimator: RateCounter(1000, 8000) */
#define RATE_SCALE 8000
#define FEEDBACK_INTERVAL_MS 500  /* AimdRateControl.feedback_interval() */
#define BURST_DELTA_THRESHOLD_MS 5
#define MAX_ADAPT_OFFSET_MS 15
#define MIN_NUM_DELTAS 60
#define DELTA_COUNTER_MAX 1000
#define MIN_FRAME_PERIOD_HISTORY_LENGTH 60
#define INTER_ARRIVAL_SHIFT 26
#define TIMESTAMP_GROUP_LENGTH_MS 5
#define GROUP_LENGTH ((TIMESTAMP_GROUP_LENGTH_MS << INTER_ARRIVAL_SHIFT) / 1000)
#define TIMESTAMP_TO_MS (1000.0 / (double)(1 << INTER_ARRIVAL_SHIFT))
#define MAX_SSRCS 64              /* distinct SSRCs one estimator names in its REMB (the first ones) */

enum { NORMAL = 0, UNDERUSING = 1, OVERUSING = 2 };  /* BandwidthUsage */
enum { HOLD = 0, INCREASE = 1, DECREASE = 2 };      /* RateControlState */

/* Python's pow() on floats calls the C library's; a volatile pointer keeps the compiler
 * from turning pow(x, 2.0) into x * x, which may round differently. */
static double (*volatile py_pow)(double, double) = pow;

typedef struct {
    int64_t count, value;
} Bucket;

typedef struct {  /* RateCounter */
    Bucket buckets[WINDOW_MS];
    Bucket total;
    int64_t origin_index;
    int64_t origin_ms;
    int has_origin;
} RateCounter;

typedef struct {  /* TimestampGroup */
    int64_t arrival_time, first_timestamp, last_timestamp, size;  /* arrival: set by the group's first packet */
} Group;

typedef struct {
    PyObject_HEAD
    /* RemoteBitrateEstimator */
    RateCounter incoming;
    int incoming_initialized;
    int64_t last_update_ms;
    int has_last_update;
    uint32_t ssrcs[MAX_SSRCS];
    int ssrc_count;
    /* InterArrival */
    Group current, previous;
    int has_current, has_previous;
    /* OveruseEstimator */
    double e[2][2];
    int64_t num_of_deltas;
    double offset, estimator_previous_offset, slope, avg_noise, var_noise;
    double ts_delta_hist[MIN_FRAME_PERIOD_HISTORY_LENGTH];
    int hist_start, hist_len;
    /* OveruseDetector */
    int hypothesis;
    int64_t detector_last_update_ms;
    int has_detector_last_update;
    int64_t overuse_counter;
    double overuse_time;
    int has_overuse_time;
    double detector_previous_offset, threshold;
    /* AimdRateControl */
    double avg_max_bitrate_kbps, var_max_bitrate_kbps;
    int has_avg_max;
    int64_t current_bitrate, latest_estimated_throughput;
    int current_bitrate_initialized;
    int64_t first_estimated_throughput_time;
    int has_first_throughput_time;
    int64_t last_change_ms;
    int has_last_change;
    int near_max;
    int64_t rtt;
    int state;
} Estimator;

static int64_t floor_mod(int64_t a, int64_t m) {
    int64_t r = a % m;
    return r < 0 ? r + m : r;
}

static int64_t uint32_add(int64_t a, int64_t b) { return (a + b) & 0xFFFFFFFF; }

static int uint32_gt(int64_t a, int64_t b) {
    const int64_t half_mod = 0x80000000;
    return (a < b && b - a > half_mod) || (a > b && a - b < half_mod);
}

/* --- RateCounter ------------------------------------------------------------------------ */

static void rate_reset(RateCounter *r) {
    memset(r->buckets, 0, sizeof r->buckets);
    r->total.count = r->total.value = 0;
    r->origin_index = 0;
    r->has_origin = 0;
}

static void rate_erase_old(RateCounter *r, int64_t now_ms) {
    int64_t new_origin_ms = now_ms - WINDOW_MS + 1;
    if (new_origin_ms - r->origin_ms >= WINDOW_MS) {  /* every bucket goes: at once */
        memset(r->buckets, 0, sizeof r->buckets);
        r->total.count = r->total.value = 0;
        r->origin_index = floor_mod(r->origin_index + (new_origin_ms - r->origin_ms), WINDOW_MS);
        r->origin_ms = new_origin_ms;
        return;
    }
    while (r->origin_ms < new_origin_ms) {
        Bucket *bucket = &r->buckets[r->origin_index];
        r->total.count -= bucket->count;
        r->total.value -= bucket->value;
        bucket->count = bucket->value = 0;
        r->origin_index = (r->origin_index + 1) % WINDOW_MS;
        r->origin_ms += 1;
    }
}

static void rate_add(RateCounter *r, int64_t value, int64_t now_ms) {
    if (!r->has_origin) {
        r->origin_ms = now_ms;
        r->has_origin = 1;
    } else {
        rate_erase_old(r, now_ms);
    }
    Bucket *bucket = &r->buckets[floor_mod(r->origin_index + now_ms - r->origin_ms, WINDOW_MS)];
    bucket->count += 1;
    bucket->value += value;
    r->total.count += 1;
    r->total.value += value;
}

/* The rate in bits/s, or 0 with *known = 0 where Python returns None. */
static int64_t rate_rate(RateCounter *r, int64_t now_ms, int *known) {
    *known = 0;
    if (r->has_origin) {
        rate_erase_old(r, now_ms);
        int64_t active_window_size = now_ms - r->origin_ms + 1;
        if (r->total.count > 0 && active_window_size > 1) {
            *known = 1;
            return (int64_t)rint((double)(RATE_SCALE * r->total.value) / (double)active_window_size);
        }
    }
    return 0;
}

/* --- InterArrival ----------------------------------------------------------------------- */

static int belongs_to_burst(Estimator *s, int64_t timestamp, int64_t arrival_time) {
    int64_t timestamp_delta = uint32_add(timestamp, -s->current.last_timestamp);
    int64_t timestamp_delta_ms = (int64_t)rint(TIMESTAMP_TO_MS * (double)timestamp_delta);
    int64_t arrival_time_delta = arrival_time - s->current.arrival_time;
    return timestamp_delta_ms == 0 ||
           ((arrival_time_delta - timestamp_delta_ms) < 0 && arrival_time_delta <= BURST_DELTA_THRESHOLD_MS);
}

static int new_timestamp_group(Estimator *s, int64_t timestamp, int64_t arrival_time) {
    if (belongs_to_burst(s, timestamp, arrival_time)) {
        return 0;
    }
    return uint32_add(timestamp, -s->current.first_timestamp) > GROUP_LENGTH;
}

static void group_start(Group *g, int64_t timestamp) {
    g->arrival_time = 0;
    g->first_timestamp = g->last_timestamp = timestamp;
    g->size = 0;
}

/* 1 with the deltas filled in, 0 where Python returns None. */
static int compute_deltas(Estimator *s, int64_t timestamp, int64_t arrival_time, int64_t packet_size,
                          int64_t *d_timestamp, int64_t *d_arrival, int64_t *d_size) {
    int found = 0;
    if (!s->has_current) {
        group_start(&s->current, timestamp);
        s->has_current = 1;
    } else if (uint32_add(timestamp, -s->current.first_timestamp) >= 0x80000000) {  /* out of order */
        return 0;
    } else if (new_timestamp_group(s, timestamp, arrival_time)) {
        if (s->has_previous) {
            *d_timestamp = uint32_add(s->current.last_timestamp, -s->previous.last_timestamp);
            *d_arrival = s->current.arrival_time - s->previous.arrival_time;
            *d_size = s->current.size - s->previous.size;
            found = 1;
        }
        s->previous = s->current;
        s->has_previous = 1;
        group_start(&s->current, timestamp);
    } else if (uint32_gt(timestamp, s->current.last_timestamp)) {
        s->current.last_timestamp = timestamp;
    }
    s->current.size += packet_size;
    s->current.arrival_time = arrival_time;
    return found;
}

/* --- OveruseEstimator ------------------------------------------------------------------- */

static double update_min_frame_period(Estimator *s, double ts_delta) {
    double min_frame_period = ts_delta;
    if (s->hist_len >= MIN_FRAME_PERIOD_HISTORY_LENGTH) {  /* pop(0) */
        s->hist_start = (s->hist_start + 1) % MIN_FRAME_PERIOD_HISTORY_LENGTH;
        s->hist_len -= 1;
    }
    for (int i = 0; i < s->hist_len; i++) {
        double old = s->ts_delta_hist[(s->hist_start + i) % MIN_FRAME_PERIOD_HISTORY_LENGTH];
        min_frame_period = min_frame_period < old ? min_frame_period : old;  /* min(old, current) */
    }
    s->ts_delta_hist[(s->hist_start + s->hist_len) % MIN_FRAME_PERIOD_HISTORY_LENGTH] = ts_delta;
    s->hist_len += 1;
    return min_frame_period;
}

static void update_noise_estimate(Estimator *s, double residual, double ts_delta) {
    double alpha = 0.01;
    if (s->num_of_deltas > 10 * 30) {
        alpha = 0.002;
    }
    double beta = py_pow(1 - alpha, ts_delta * 30.0 / 1000.0);
    s->avg_noise = beta * s->avg_noise + (1 - beta) * residual;
    s->var_noise = beta * s->var_noise + (1 - beta) * py_pow(s->avg_noise - residual, 2.0);
    if (s->var_noise < 1) {
        s->var_noise = 1;
    }
}

static void estimator_update(Estimator *s, int64_t time_delta_ms, double timestamp_delta_ms, int64_t size_delta,
                             int current_hypothesis) {
    static const double process_noise[2] = {1e-13, 1e-3};
    double min_frame_period = update_min_frame_period(s, timestamp_delta_ms);
    double t_ts_delta = (double)time_delta_ms - timestamp_delta_ms;
    double h0 = (double)size_delta, h1 = 1.0;

    s->num_of_deltas = s->num_of_deltas + 1 < DELTA_COUNTER_MAX ? s->num_of_deltas + 1 : DELTA_COUNTER_MAX;

    s->e[0][0] += process_noise[0];
    s->e[1][1] += process_noise[1];
    if ((current_hypothesis == OVERUSING && s->offset < s->estimator_previous_offset) ||
        (current_hypothesis == UNDERUSING && s->offset > s->estimator_previous_offset)) {
        s->e[1][1] += 10 * process_noise[1];
    }
    double eh0 = s->e[0][0] * h0 + s->e[0][1] * h1;
    double eh1 = s->e[1][0] * h0 + s->e[1][1] * h1;

    double residual = t_ts_delta - s->slope * h0 - s->offset;
    if (current_hypothesis == NORMAL) {
        double max_residual = 3.0 * sqrt(s->var_noise);
        if (fabs(residual) < max_residual) {
            update_noise_estimate(s, residual, min_frame_period);
        } else {
            update_noise_estimate(s, residual < 0 ? -max_residual : max_residual, min_frame_period);
        }
    }

    double denom = s->var_noise + h0 * eh0 + h1 * eh1;
    double k0 = eh0 / denom, k1 = eh1 / denom;
    double ikh00 = 1.0 - k0 * h0, ikh01 = -k0 * h1, ikh10 = -k1 * h0, ikh11 = 1.0 - k1 * h1;
    double e00 = s->e[0][0], e01 = s->e[0][1];

    s->e[0][0] = e00 * ikh00 + s->e[1][0] * ikh01;
    s->e[0][1] = e01 * ikh00 + s->e[1][1] * ikh01;
    s->e[1][0] = e00 * ikh10 + s->e[1][0] * ikh11;
    s->e[1][1] = e01 * ikh10 + s->e[1][1] * ikh11;

    s->estimator_previous_offset = s->offset;
    s->slope += k0 * residual;
    s->offset += k1 * residual;
}

/* --- OveruseDetector -------------------------------------------------------------------- */

static void update_threshold(Estimator *s, double modified_offset, int64_t now_ms) {
    if (!s->has_detector_last_update) {
        s->detector_last_update_ms = now_ms;
        s->has_detector_last_update = 1;
    }
    if (fabs(modified_offset) > s->threshold + MAX_ADAPT_OFFSET_MS) {
        s->detector_last_update_ms = now_ms;
        return;
    }
    double k = fabs(modified_offset) < s->threshold ? 0.039 : 0.0087;  /* k_down, k_up */
    int64_t time_delta_ms = now_ms - s->detector_last_update_ms;
    if (time_delta_ms > 100) {
        time_delta_ms = 100;
    }
    s->threshold += k * (fabs(modified_offset) - s->threshold) * (double)time_delta_ms;
    double capped = 600 < s->threshold ? 600 : s->threshold;  /* max(6, min(threshold, 600)) */
    s->threshold = capped > 6 ? capped : 6;
    s->detector_last_update_ms = now_ms;
}

static void detect(Estimator *s, double offset, double timestamp_delta_ms, int64_t num_of_deltas, int64_t now_ms) {
    if (num_of_deltas < 2) {
        return;
    }
    double t = (double)(num_of_deltas < MIN_NUM_DELTAS ? num_of_deltas : MIN_NUM_DELTAS) * offset;
    if (t > s->threshold) {
        if (!s->has_overuse_time) {
            s->overuse_time = timestamp_delta_ms / 2;
            s->has_overuse_time = 1;
        } else {
            s->overuse_time += timestamp_delta_ms;
        }
        s->overuse_counter += 1;
        if (s->overuse_time > 10 && s->overuse_counter > 1 && offset >= s->detector_previous_offset) {
            s->overuse_counter = 0;
            s->overuse_time = 0;
            s->hypothesis = OVERUSING;
        }
    } else if (t < -s->threshold) {
        s->overuse_counter = 0;
        s->has_overuse_time = 0;
        s->hypothesis = UNDERUSING;
    } else {
        s->overuse_counter = 0;
        s->has_overuse_time = 0;
        s->hypothesis = NORMAL;
    }
    s->detector_previous_offset = offset;
    update_threshold(s, t, now_ms);
}

/* --- AimdRateControl -------------------------------------------------------------------- */

static int64_t clamp_bitrate(Estimator *s, int64_t new_bitrate, int64_t estimated_throughput) {
    int64_t max_bitrate = (int64_t)(1.5 * (double)estimated_throughput) + 10000;
    if (s->current_bitrate > max_bitrate) {
        max_bitrate = s->current_bitrate;
    }
    return new_bitrate < max_bitrate ? new_bitrate : max_bitrate;
}

/* -1 with ZeroDivisionError set where Python raises it (a current bitrate of 0). */
static int near_max_rate_increase(Estimator *s, int64_t *increase) {
    double bits_per_frame = (double)s->current_bitrate / 30;
    int64_t packets_per_frame = (int64_t)ceil(bits_per_frame / (8 * 1200));
    if (packets_per_frame == 0) {
        PyErr_SetString(PyExc_ZeroDivisionError, "float division by zero");
        return -1;
    }
    double avg_packet_size_bits = bits_per_frame / (double)packets_per_frame;
    int64_t response_time = s->rtt + 100;
    int64_t rate = (int64_t)((avg_packet_size_bits * 1000) / (double)response_time);
    *increase = rate > 4000 ? rate : 4000;
    return 0;
}

static int64_t multiplicative_rate_increase(Estimator *s, int64_t new_bitrate, int64_t now_ms) {
    double alpha = 1.08;
    if (s->has_last_change) {
        int64_t elapsed_ms = now_ms - s->last_change_ms;
        if (elapsed_ms > 1000) {
            elapsed_ms = 1000;
        }
        alpha = py_pow(alpha, (double)elapsed_ms / 1000);
    }
    double increase = (alpha - 1) * (double)new_bitrate;
    return (int64_t)(1000 > increase ? 1000 : increase);
}

static void update_max_throughput_estimate(Estimator *s, double estimated_throughput_kbps) {
    double alpha = 0.05;
    if (!s->has_avg_max) {
        s->avg_max_bitrate_kbps = estimated_throughput_kbps;
        s->has_avg_max = 1;
    } else {
        s->avg_max_bitrate_kbps = (1 - alpha) * s->avg_max_bitrate_kbps + alpha * estimated_throughput_kbps;
    }
    double norm = s->avg_max_bitrate_kbps > 1 ? s->avg_max_bitrate_kbps : 1;
    s->var_max_bitrate_kbps = (1 - alpha) * s->var_max_bitrate_kbps +
                              alpha * py_pow(s->avg_max_bitrate_kbps - estimated_throughput_kbps, 2.0) / norm;
    double capped = 2.5 < s->var_max_bitrate_kbps ? 2.5 : s->var_max_bitrate_kbps;
    s->var_max_bitrate_kbps = capped > 0.4 ? capped : 0.4;
}

/* 1 with *bitrate set, 0 where Python returns None, -1 on an exception. */
static int rate_control_update(Estimator *s, int usage, int64_t estimated_throughput, int throughput_known,
                               int64_t now_ms, int64_t *bitrate) {
    if (!s->current_bitrate_initialized && throughput_known) {
        if (!s->has_first_throughput_time) {
            s->first_estimated_throughput_time = now_ms;
            s->has_first_throughput_time = 1;
        } else if (now_ms - s->first_estimated_throughput_time > 3000) {
            s->current_bitrate = estimated_throughput;
            s->current_bitrate_initialized = 1;
        }
    }
    if (!s->current_bitrate_initialized && usage != OVERUSING) {
        return 0;
    }
    if (usage == NORMAL && s->state == HOLD) {
        s->last_change_ms = now_ms;
        s->has_last_change = 1;
        s->state = INCREASE;
    } else if (usage == OVERUSING) {
        s->state = DECREASE;
    } else if (usage == UNDERUSING) {
        s->state = HOLD;
    }

    int64_t new_bitrate = s->current_bitrate;
    if (throughput_known) {
        s->latest_estimated_throughput = estimated_throughput;
    } else {
        estimated_throughput = s->latest_estimated_throughput;
    }
    double estimated_throughput_kbps = (double)estimated_throughput / 1000;

    if (s->state == INCREASE) {
        if (s->has_avg_max) {
            double sigma_kbps = sqrt(s->var_max_bitrate_kbps * s->avg_max_bitrate_kbps);
            if (estimated_throughput_kbps >= s->avg_max_bitrate_kbps + 3 * sigma_kbps) {
                s->near_max = 0;
                s->has_avg_max = 0;
            }
        }
        if (s->near_max) {
            int64_t increase;
            if (near_max_rate_increase(s, &increase) < 0) {
                return -1;
            }
            new_bitrate += (int64_t)((double)((now_ms - s->last_change_ms) * increase) / 1000);
        } else {
            new_bitrate += multiplicative_rate_increase(s, new_bitrate, now_ms);
        }
        s->last_change_ms = now_ms;
        s->has_last_change = 1;
    } else if (s->state == DECREASE) {
        if (s->has_avg_max) {
            double sigma_kbps = sqrt(s->var_max_bitrate_kbps * s->avg_max_bitrate_kbps);
            if (estimated_throughput_kbps < s->avg_max_bitrate_kbps - 3 * sigma_kbps) {
                s->has_avg_max = 0;
            }
        }
        update_max_throughput_estimate(s, estimated_throughput_kbps);
        s->near_max = 1;
        new_bitrate = (int64_t)rint(0.85 * (double)estimated_throughput);
        s->last_change_ms = now_ms;
        s->has_last_change = 1;
        s->state = HOLD;
    }
    s->current_bitrate = clamp_bitrate(s, new_bitrate, estimated_throughput);
    *bitrate = s->current_bitrate;
    return 1;
}

/* --- the Python type -------------------------------------------------------------------- */

static PyObject *Estimator_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, ":Estimator", kwlist)) {
        return NULL;
    }
    Estimator *s = (Estimator *)type->tp_alloc(type, 0);  /* zeroed */
    if (s == NULL) {
        return NULL;
    }
    rate_reset(&s->incoming);
    s->incoming_initialized = 1;
    s->e[0][0] = 100.0;
    s->e[1][1] = 0.1;
    s->slope = 1.0 / 64;
    s->var_noise = 50.0;
    s->threshold = 12.5;
    s->var_max_bitrate_kbps = 0.4;
    s->current_bitrate = 30000000;
    s->latest_estimated_throughput = 30000000;
    s->rtt = 200;
    s->state = HOLD;
    s->hypothesis = NORMAL;
    return (PyObject *)s;
}

static PyObject *Estimator_add(Estimator *s, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"arrival_time_ms", "abs_send_time", "payload_size", "ssrc", NULL};
    long long arrival_time_ms, abs_send_time, payload_size, ssrc_value;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LLLL:add", kwlist, &arrival_time_ms, &abs_send_time,
                                     &payload_size, &ssrc_value)) {
        return NULL;
    }
    if (abs_send_time < 0 || abs_send_time > 0xFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "abs_send_time is a 24-bit value");
        return NULL;
    }
    if (ssrc_value < 0 || ssrc_value > 0xFFFFFFFF) {
        PyErr_SetString(PyExc_ValueError, "ssrc is a 32-bit value");
        return NULL;
    }
    uint32_t ssrc = (uint32_t)ssrc_value;
    int64_t arrival = arrival_time_ms;
    int64_t timestamp = (int64_t)abs_send_time << 8;

    int seen = 0;  /* self.ssrcs[ssrc] = arrival_time_ms: insertion order, as the dict keeps it */
    for (int i = 0; i < s->ssrc_count; i++) {
        if (s->ssrcs[i] == ssrc) {
            seen = 1;
            break;
        }
    }
    if (!seen && s->ssrc_count < MAX_SSRCS) {  /* aiortc's dict grows without bound: here the first 64 */
        s->ssrcs[s->ssrc_count++] = ssrc;
    }

    int known;
    rate_rate(&s->incoming, arrival, &known);
    if (known) {
        s->incoming_initialized = 1;
    } else if (s->incoming_initialized) {
        rate_reset(&s->incoming);
        s->incoming_initialized = 0;
    }
    rate_add(&s->incoming, payload_size, arrival);

    int64_t d_timestamp, d_arrival, d_size;
    if (compute_deltas(s, timestamp, arrival, payload_size, &d_timestamp, &d_arrival, &d_size)) {
        double timestamp_delta_ms = (double)d_timestamp * TIMESTAMP_TO_MS;
        estimator_update(s, d_arrival, timestamp_delta_ms, d_size, s->hypothesis);
        detect(s, s->offset, timestamp_delta_ms, s->num_of_deltas, arrival);
    }

    int update_estimate = !s->has_last_update || (arrival - s->last_update_ms) > FEEDBACK_INTERVAL_MS ||
                          s->hypothesis == OVERUSING;
    if (update_estimate) {
        int64_t throughput = rate_rate(&s->incoming, arrival, &known);
        int64_t bitrate;
        int result = rate_control_update(s, s->hypothesis, throughput, known, arrival, &bitrate);
        if (result < 0) {
            return NULL;
        }
        if (result > 0) {
            s->last_update_ms = arrival;
            s->has_last_update = 1;
            PyObject *ssrcs = PyList_New(s->ssrc_count);
            if (ssrcs == NULL) {
                return NULL;
            }
            for (int i = 0; i < s->ssrc_count; i++) {
                PyObject *item = PyLong_FromUnsignedLong(s->ssrcs[i]);
                if (item == NULL) {
                    Py_DECREF(ssrcs);
                    return NULL;
                }
                PyList_SET_ITEM(ssrcs, i, item);
            }
            return Py_BuildValue("(LN)", (long long)bitrate, ssrcs);
        }
    }
    Py_RETURN_NONE;
}

static PyObject *optional_double(int present, double value) {
    return present ? PyFloat_FromDouble(value) : Py_NewRef(Py_None);
}

static PyObject *optional_int(int present, int64_t value) {
    return present ? PyLong_FromLongLong(value) : Py_NewRef(Py_None);
}

static PyObject *Estimator_state(Estimator *s, PyObject *Py_UNUSED(ignored)) {
    return Py_BuildValue(
        "{s:i,s:d,s:d,s:d,s:d,s:d,s:L,s:N,s:L,s:d,s:N,s:L,s:L,s:i,s:i,s:N,s:(dddd),s:(LL)}", "hypothesis",
        s->hypothesis, "threshold", s->threshold, "offset", s->offset, "slope", s->slope, "var_noise", s->var_noise,
        "avg_noise", s->avg_noise, "num_of_deltas", (long long)s->num_of_deltas, "overuse_time",
        optional_double(s->has_overuse_time, s->overuse_time), "overuse_counter", (long long)s->overuse_counter,
        "var_max_bitrate_kbps", s->var_max_bitrate_kbps, "avg_max_bitrate_kbps",
        optional_double(s->has_avg_max, s->avg_max_bitrate_kbps), "current_bitrate", (long long)s->current_bitrate,
        "latest_estimated_throughput", (long long)s->latest_estimated_throughput, "near_max", s->near_max,
        "rate_control_state", s->state, "last_update_ms", optional_int(s->has_last_update, s->last_update_ms), "e",
        s->e[0][0], s->e[0][1], s->e[1][0], s->e[1][1], "incoming_total", (long long)s->incoming.total.count,
        (long long)s->incoming.total.value);
}

static PyMethodDef Estimator_methods[] = {
    {"add", (PyCFunction)(void (*)(void))Estimator_add, METH_VARARGS | METH_KEYWORDS,
     "add(arrival_time_ms, abs_send_time, payload_size, ssrc) -> (bitrate, [ssrc, ...]) or None: one RTP packet; "
     "a REMB to send when the estimate is due (aiortc.rate.RemoteBitrateEstimator.add)."},
    {"state", (PyCFunction)Estimator_state, METH_NOARGS,
     "The filter's state as a dict (for the differential test against aiortc's estimator)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EstimatorType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "gbmedia.sfu._remb.Estimator",
    .tp_basicsize = sizeof(Estimator),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "aiortc's RemoteBitrateEstimator (REMB from abs-send-time), the same results in C.",
    .tp_new = Estimator_new,
    .tp_methods = Estimator_methods,
};

static struct PyModuleDef remb_module = {
    PyModuleDef_HEAD_INIT, "_remb", "Native REMB estimate of a published track (see gbmedia/sfu/remb.py).", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__remb(void) {
    if (PyType_Ready(&EstimatorType) < 0) {
        return NULL;
    }
    PyObject *module = PyModule_Create(&remb_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyModule_AddObjectRef(module, "Estimator", (PyObject *)&EstimatorType) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
