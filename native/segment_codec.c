/* streamlib segment codec — see segment_codec.h and docs/format.md.
 *
 * The pure-Python twin in streamlib/codec/_python.py follows this file function by function,
 * with the same checks in the same order, so that both report the same status and position. */
#include "segment_codec.h"

#include <string.h>

#define BATCH_MAGIC 0x42524C53u /* "SLRB" read little-endian */
#define BLOCK_MAGIC 0x42444C53u /* "SLDB" */
#define FORMAT_VERSION 1
#define FLAG_RECORDS 0x01
#define COMPRESSION_MAX 2
#define CHECKSUM_FROM 12 /* both headers: the checksum covers [12, end) */

/* ---- little-endian loads and stores (byte by byte: portable, and compilers fuse them) ---- */

static uint32_t load32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t load64(const uint8_t *p) { return (uint64_t)load32(p) | (uint64_t)load32(p + 4) << 32; }

static uint16_t load16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

static void store32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void store64(uint8_t *p, uint64_t v) {
    store32(p, (uint32_t)v);
    store32(p + 4, (uint32_t)(v >> 32));
}

/* ---- XXH64, written from the published algorithm; streaming so that a header and a payload
 * in two buffers hash as one run of bytes ---- */

#define P1 0x9E3779B185EBCA87ull
#define P2 0xC2B2AE3D27D4EB4Full
#define P3 0x165667B19E3779F9ull
#define P4 0x85EBCA77C2B2AE63ull
#define P5 0x27D4EB2F165667C5ull

static uint64_t rotl64(uint64_t x, unsigned r) { return (x << r) | (x >> (64 - r)); }

static uint64_t xxh_round(uint64_t acc, uint64_t input) {
    acc += input * P2;
    return rotl64(acc, 31) * P1;
}

static uint64_t xxh_merge(uint64_t acc, uint64_t v) {
    acc ^= xxh_round(0, v);
    return acc * P1 + P4;
}

typedef struct {
    uint64_t total, v1, v2, v3, v4;
    uint8_t buf[32];
    size_t buffered;
} xxh64_state;

static void xxh64_init(xxh64_state *s, uint64_t seed) {
    s->total = 0;
    s->v1 = seed + P1 + P2;
    s->v2 = seed + P2;
    s->v3 = seed;
    s->v4 = seed - P1;
    s->buffered = 0;
}

static const uint8_t *xxh64_stripes(xxh64_state *s, const uint8_t *p, const uint8_t *end) {
    uint64_t v1 = s->v1, v2 = s->v2, v3 = s->v3, v4 = s->v4;
    while ((size_t)(end - p) >= 32) {
        v1 = xxh_round(v1, load64(p));
        v2 = xxh_round(v2, load64(p + 8));
        v3 = xxh_round(v3, load64(p + 16));
        v4 = xxh_round(v4, load64(p + 24));
        p += 32;
    }
    s->v1 = v1, s->v2 = v2, s->v3 = v3, s->v4 = v4;
    return p;
}

static void xxh64_update(xxh64_state *s, const uint8_t *p, size_t len) {
    if (len == 0) return;
    const uint8_t *end = p + len;
    s->total += len;
    if (s->buffered + len < 32) {
        memcpy(s->buf + s->buffered, p, len);
        s->buffered += len;
        return;
    }
    if (s->buffered) {
        size_t take = 32 - s->buffered;
        memcpy(s->buf + s->buffered, p, take);
        xxh64_stripes(s, s->buf, s->buf + 32);
        p += take;
        s->buffered = 0;
    }
    p = xxh64_stripes(s, p, end);
    s->buffered = (size_t)(end - p);
    if (s->buffered) memcpy(s->buf, p, s->buffered);
}

static uint64_t xxh64_digest(const xxh64_state *s, uint64_t seed) {
    uint64_t h;
    const uint8_t *p = s->buf, *end = s->buf + s->buffered;
    if (s->total >= 32) {
        h = rotl64(s->v1, 1) + rotl64(s->v2, 7) + rotl64(s->v3, 12) + rotl64(s->v4, 18);
        h = xxh_merge(h, s->v1);
        h = xxh_merge(h, s->v2);
        h = xxh_merge(h, s->v3);
        h = xxh_merge(h, s->v4);
    } else {
        h = seed + P5;
    }
    h += s->total;
    for (; end - p >= 8; p += 8) h = rotl64(h ^ xxh_round(0, load64(p)), 27) * P1 + P4;
    if (end - p >= 4) {
        h = rotl64(h ^ ((uint64_t)load32(p) * P1), 23) * P2 + P3;
        p += 4;
    }
    for (; p < end; p++) h = rotl64(h ^ (*p * P5), 11) * P1;
    h ^= h >> 33;
    h *= P2;
    h ^= h >> 29;
    h *= P3;
    h ^= h >> 32;
    return h;
}

uint64_t slc_xxh64(const uint8_t *data, size_t len, uint64_t seed) {
    xxh64_state s;
    xxh64_init(&s, seed);
    xxh64_update(&s, data, len);
    return xxh64_digest(&s, seed);
}

/* Checksum of header[12, header_size) followed by body[0, body_size). */
static uint64_t frame_checksum(const uint8_t *header, size_t header_size, const uint8_t *body,
                               size_t body_size) {
    xxh64_state s;
    xxh64_init(&s, 0);
    xxh64_update(&s, header + CHECKSUM_FROM, header_size - CHECKSUM_FROM);
    xxh64_update(&s, body, body_size);
    return xxh64_digest(&s, 0);
}

/* ---- varints ---- */

static size_t uvarint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint64_t zigzag(int64_t v) { return ((uint64_t)v << 1) ^ (0 - ((uint64_t)v >> 63)); }

static int64_t unzigzag(uint64_t v) { return (int64_t)(v >> 1) ^ -(int64_t)(v & 1); }

static uint8_t *put_uvarint(uint8_t *p, uint64_t v) {
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Read a uvarint from p[*pos, limit). Rejects truncation, more than 10 bytes, more than 64 bits
 * and overlong encodings. Returns 1 and advances *pos, or 0. */
static int get_uvarint(const uint8_t *p, size_t *pos, size_t limit, uint64_t *out) {
    size_t i = *pos;
    uint64_t v = 0;
    if (i < limit && p[i] < 0x80) { /* the common one-byte case */
        *out = p[i];
        *pos = i + 1;
        return 1;
    }
    for (unsigned n = 0; n < 10; n++, i++) {
        if (i >= limit) return 0;
        uint8_t b = p[i];
        if (n == 9 && b > 1) return 0;
        v |= (uint64_t)(b & 0x7F) << (7 * n);
        if (b < 0x80) {
            if (b == 0) return 0; /* overlong: n > 0 here, the one-byte case returned above */
            *out = v;
            *pos = i + 1;
            return 1;
        }
    }
    return 0;
}

/* ---- UTF-8 validation, as strict as Python's decoder (no overlongs, no surrogates) ---- */

static int valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            if (c == 0xF4) hi = 0x8F;
        } else {
            return 0;
        }
        if (n - i - 1 < need) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k <= need; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += need + 1;
    }
    return 1;
}

/* ---- records payload ---- */

/* Size of one record's fields after its length prefix. Lengths were checked by the caller. */
static uint64_t record_body_size(uint32_t i, uint64_t ts_delta, int64_t key_len, int64_t value_len,
                                 uint32_t header_count, const int64_t *header_lengths) {
    uint64_t n = uvarint_size(ts_delta) + uvarint_size(i) + uvarint_size(zigzag(key_len));
    if (key_len > 0) n += (uint64_t)key_len;
    n += uvarint_size((uint64_t)value_len) + (uint64_t)value_len + uvarint_size(header_count);
    for (uint32_t h = 0; h < header_count; h++) {
        uint64_t name = (uint64_t)header_lengths[2 * h], value = (uint64_t)header_lengths[2 * h + 1];
        n += uvarint_size(name) + name + uvarint_size(value) + value;
    }
    return n;
}

/* Take len bytes from a budget of *left, refusing negative lengths and overdrafts. */
static int take(int64_t len, size_t *left) {
    if (len < 0 || (uint64_t)len > *left) return 0;
    *left -= (size_t)len;
    return 1;
}

int64_t slc_records_size(uint32_t count, const int64_t *timestamps, int64_t base_timestamp,
                         const int64_t *key_lengths, size_t keys_size,
                         const int64_t *value_lengths, size_t values_size,
                         const uint32_t *header_counts, const int64_t *header_lengths,
                         size_t header_total, size_t header_bytes_size) {
    size_t keys_left = keys_size, values_left = values_size, header_bytes_left = header_bytes_size;
    size_t headers_left = header_total;
    uint64_t total = 0;
    if (count == 0 || value_lengths == NULL) return -SLC_BAD_ARGUMENT;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t ts_delta = timestamps ? zigzag((int64_t)((uint64_t)timestamps[i] - (uint64_t)base_timestamp)) : 0;
        int64_t key_len = key_lengths ? key_lengths[i] : -1;
        uint32_t hc = header_counts ? header_counts[i] : 0;
        if (key_len != -1 && !take(key_len, &keys_left)) return -SLC_BAD_ARGUMENT;
        if (!take(value_lengths[i], &values_left)) return -SLC_BAD_ARGUMENT;
        if (hc > headers_left) return -SLC_BAD_ARGUMENT;
        const int64_t *hl = header_lengths ? header_lengths + 2 * (header_total - headers_left) : NULL;
        if (hc && hl == NULL) return -SLC_BAD_ARGUMENT;
        for (size_t h = 0; h < 2 * (size_t)hc; h++)
            if (!take(hl[h], &header_bytes_left)) return -SLC_BAD_ARGUMENT;
        headers_left -= hc;
        uint64_t body = record_body_size(i, ts_delta, key_len, value_lengths[i], hc, hl);
        total += uvarint_size(body) + body;
        if (total > SLC_MAX_PAYLOAD) return -SLC_BAD_LENGTH;
    }
    if (keys_left || values_left || header_bytes_left || headers_left) return -SLC_BAD_ARGUMENT;
    return (int64_t)total;
}

int64_t slc_records_encode(uint32_t count, const int64_t *timestamps, int64_t base_timestamp,
                           const int64_t *key_lengths, const uint8_t *keys, size_t keys_size,
                           const int64_t *value_lengths, const uint8_t *values, size_t values_size,
                           const uint32_t *header_counts, const int64_t *header_lengths,
                           size_t header_total, const uint8_t *header_bytes,
                           size_t header_bytes_size, uint8_t *out, size_t out_size) {
    /* The size pass validates every length against the buffers, so the writes below are safe. */
    int64_t size = slc_records_size(count, timestamps, base_timestamp, key_lengths, keys_size,
                                    value_lengths, values_size, header_counts, header_lengths,
                                    header_total, header_bytes_size);
    if (size < 0) return size;
    if ((uint64_t)size > out_size) return -SLC_BAD_ARGUMENT;
    uint8_t *p = out;
    const int64_t *hl = header_lengths;
    for (uint32_t i = 0; i < count; i++) {
        uint64_t ts_delta = timestamps ? zigzag((int64_t)((uint64_t)timestamps[i] - (uint64_t)base_timestamp)) : 0;
        int64_t key_len = key_lengths ? key_lengths[i] : -1;
        int64_t value_len = value_lengths[i];
        uint32_t hc = header_counts ? header_counts[i] : 0;
        p = put_uvarint(p, record_body_size(i, ts_delta, key_len, value_len, hc, hl));
        p = put_uvarint(p, ts_delta);
        p = put_uvarint(p, i);
        p = put_uvarint(p, zigzag(key_len));
        if (key_len > 0) {
            memcpy(p, keys, (size_t)key_len);
            p += key_len;
            keys += key_len;
        }
        p = put_uvarint(p, (uint64_t)value_len);
        if (value_len) memcpy(p, values, (size_t)value_len);
        p += value_len;
        values += value_len;
        p = put_uvarint(p, hc);
        for (size_t h = 0; h < 2 * (size_t)hc; h++, hl++) {
            p = put_uvarint(p, (uint64_t)*hl);
            if (*hl) memcpy(p, header_bytes, (size_t)*hl);
            p += *hl;
            header_bytes += *hl;
        }
    }
    return (int64_t)(p - out);
}

#define FAIL(status, position)        \
    do {                              \
        *error_position = (position); \
        return (status);              \
    } while (0)

/* Where slc_records_index stopped: before record `records`, at byte `position`. */
static void stop_at(slc_records_cursor *cursor, size_t position, size_t records, size_t headers,
                    int64_t max_timestamp) {
    cursor->position = position;
    cursor->records = records;
    cursor->headers = headers;
    cursor->max_timestamp = max_timestamp;
}

int slc_records_index(const uint8_t *payload, size_t size, uint32_t count, int64_t base_timestamp,
                      int64_t *records, size_t records_cap, int64_t *headers, size_t headers_cap,
                      slc_records_cursor *cursor, size_t *error_position) {
    size_t pos = cursor->position, header_index = cursor->headers;
    int64_t max_ts = cursor->max_timestamp;
    uint64_t v;
    if (count == 0 || count > size / SLC_MIN_RECORD_SIZE) FAIL(SLC_BAD_COUNT, 0);
    for (size_t i = cursor->records; i < count; i++) {
        /* The state before this record, for the cursor if the record does not fit (kept in
         * locals: the cursor is written only when the call returns). */
        size_t record_pos = pos, record_headers = header_index;
        int64_t record_max_ts = max_ts;
        if (i == records_cap) {
            stop_at(cursor, pos, i, header_index, max_ts);
            cursor->headers_needed = header_index;
            return SLC_NEED_SPACE;
        }
        size_t field = pos;
        if (!get_uvarint(payload, &pos, size, &v)) FAIL(SLC_BAD_VARINT, field);
        if (v > size - pos) FAIL(SLC_BAD_LENGTH, field);
        size_t end = pos + (size_t)v;

        field = pos;
        if (!get_uvarint(payload, &pos, end, &v)) FAIL(SLC_BAD_VARINT, field);
        if (i == 0 && v != 0) FAIL(SLC_BAD_RECORD, field);
        int64_t ts = (int64_t)((uint64_t)base_timestamp + (uint64_t)unzigzag(v));
        if (ts > max_ts) max_ts = ts;

        field = pos;
        if (!get_uvarint(payload, &pos, end, &v)) FAIL(SLC_BAD_VARINT, field);
        if (v != i) FAIL(SLC_BAD_RECORD, field);

        field = pos;
        if (!get_uvarint(payload, &pos, end, &v)) FAIL(SLC_BAD_VARINT, field);
        int64_t key_len = unzigzag(v);
        if (key_len < -1 || (key_len > 0 && (uint64_t)key_len > end - pos)) FAIL(SLC_BAD_LENGTH, field);
        size_t key_pos = pos;
        if (key_len > 0) pos += (size_t)key_len;

        field = pos;
        if (!get_uvarint(payload, &pos, end, &v)) FAIL(SLC_BAD_VARINT, field);
        if (v > end - pos) FAIL(SLC_BAD_LENGTH, field);
        size_t value_pos = pos, value_len = (size_t)v;
        pos += value_len;

        field = pos;
        if (!get_uvarint(payload, &pos, end, &v)) FAIL(SLC_BAD_VARINT, field);
        if (v > (end - pos) / 2) FAIL(SLC_BAD_COUNT, field); /* a header takes at least 2 bytes */
        size_t header_count = (size_t)v, first_header = header_index;
        for (size_t h = 0; h < header_count; h++, header_index++) {
            field = pos;
            if (!get_uvarint(payload, &pos, end, &v)) FAIL(SLC_BAD_VARINT, field);
            if (v > end - pos) FAIL(SLC_BAD_LENGTH, field);
            size_t name_pos = pos, name_len = (size_t)v;
            if (!valid_utf8(payload + pos, name_len)) FAIL(SLC_BAD_UTF8, name_pos);
            pos += name_len;
            field = pos;
            if (!get_uvarint(payload, &pos, end, &v)) FAIL(SLC_BAD_VARINT, field);
            if (v > end - pos) FAIL(SLC_BAD_LENGTH, field);
            if (header_index < headers_cap) {
                int64_t *hs = headers + SLC_HEADER_FIELDS * header_index;
                hs[0] = (int64_t)name_pos;
                hs[1] = (int64_t)name_len;
                hs[2] = (int64_t)pos;
                hs[3] = (int64_t)v;
            }
            pos += (size_t)v;
        }
        if (pos != end) FAIL(SLC_BAD_LENGTH, pos);
        if (header_index > headers_cap) { /* the record is sound but its headers did not fit */
            stop_at(cursor, record_pos, i, record_headers, record_max_ts);
            cursor->headers_needed = header_index;
            return SLC_NEED_SPACE;
        }

        int64_t *r = records + SLC_RECORD_FIELDS * i;
        r[0] = ts;
        r[1] = (int64_t)key_pos;
        r[2] = key_len;
        r[3] = (int64_t)value_pos;
        r[4] = (int64_t)value_len;
        r[5] = (int64_t)first_header;
        r[6] = (int64_t)header_count;
    }
    if (pos != size) FAIL(SLC_BAD_LENGTH, pos);
    stop_at(cursor, pos, count, header_index, max_ts);
    return SLC_OK;
}

/* ---- batch header and scanner ---- */

int slc_batch_header(uint8_t *out, uint8_t flags, uint32_t count, uint64_t stream_id,
                     int64_t base_offset, int64_t base_timestamp, int64_t max_timestamp,
                     const uint8_t *payload, size_t payload_size) {
    if (payload_size > SLC_MAX_PAYLOAD || (flags & ~FLAG_RECORDS) || count == 0 ||
        count > INT32_MAX || ((flags & FLAG_RECORDS) && count > payload_size / SLC_MIN_RECORD_SIZE) ||
        base_offset < 0 || base_offset > INT64_MAX - (int64_t)count || max_timestamp < base_timestamp)
        return SLC_BAD_ARGUMENT;
    store32(out, BATCH_MAGIC);
    out[12] = FORMAT_VERSION;
    out[13] = flags;
    out[14] = out[15] = 0;
    store32(out + 16, (uint32_t)payload_size);
    store32(out + 20, count);
    store64(out + 24, stream_id);
    store64(out + 32, (uint64_t)base_offset);
    store64(out + 40, (uint64_t)base_timestamp);
    store64(out + 48, (uint64_t)max_timestamp);
    store64(out + 4, frame_checksum(out, SLC_BATCH_HEADER_SIZE, payload, payload_size));
    return SLC_OK;
}

/* Validate the batch at buf[p, size). Returns SLC_OK with *length set, or a status. */
static int check_batch(const uint8_t *buf, size_t size, size_t p, size_t *length, size_t *error_position) {
    const uint8_t *h = buf + p;
    if (size - p < SLC_BATCH_HEADER_SIZE) FAIL(SLC_TRUNCATED, p);
    if (load32(h) != BATCH_MAGIC) FAIL(SLC_BAD_MAGIC, p);
    if (h[12] != FORMAT_VERSION) FAIL(SLC_BAD_VERSION, p + 12);
    uint32_t payload = load32(h + 16);
    if (payload > SLC_MAX_PAYLOAD) FAIL(SLC_BAD_LENGTH, p + 16);
    if (payload > size - p - SLC_BATCH_HEADER_SIZE) FAIL(SLC_TRUNCATED, p + 16);
    if (load64(h + 4) != frame_checksum(h, SLC_BATCH_HEADER_SIZE, h + SLC_BATCH_HEADER_SIZE, payload))
        FAIL(SLC_BAD_CHECKSUM, p + 4);
    if ((h[13] & ~FLAG_RECORDS) || load16(h + 14)) FAIL(SLC_BAD_FLAGS, p + 13);
    uint32_t count = load32(h + 20);
    if (count == 0 || count > INT32_MAX) FAIL(SLC_BAD_COUNT, p + 20);
    if ((h[13] & FLAG_RECORDS) && count > payload / SLC_MIN_RECORD_SIZE) FAIL(SLC_BAD_COUNT, p + 20);
    int64_t base_offset = (int64_t)load64(h + 32);
    if (base_offset < 0 || base_offset > INT64_MAX - (int64_t)count) FAIL(SLC_BAD_OFFSET, p + 32);
    if ((int64_t)load64(h + 48) < (int64_t)load64(h + 40)) FAIL(SLC_BAD_TIMESTAMP, p + 48);
    *length = SLC_BATCH_HEADER_SIZE + (size_t)payload;
    return SLC_OK;
}

/* Fill one scan entry from the header at h (found valid at position p, length bytes long). */
typedef void (*fill_entry)(int64_t *e, const uint8_t *h, size_t p, size_t length);
typedef int (*check_entry)(const uint8_t *buf, size_t size, size_t p, size_t *length,
                           size_t *error_position);

static void fill_batch(int64_t *e, const uint8_t *h, size_t p, size_t length) {
    e[0] = (int64_t)p;
    e[1] = (int64_t)length;
    e[2] = h[13];
    e[3] = load32(h + 20);
    e[4] = (int64_t)load64(h + 24);
    e[5] = (int64_t)load64(h + 32);
    e[6] = (int64_t)load64(h + 40);
    e[7] = (int64_t)load64(h + 48);
}

/* Walk entries of one kind from start: the loop both public scanners share. */
static int scan(check_entry check, fill_entry fill, size_t fields, const uint8_t *buf, size_t size,
                size_t start, int64_t *entries, size_t cap, size_t *found, size_t *stop,
                size_t *error_position) {
    size_t p = start, n = 0;
    int status = SLC_OK;
    *error_position = 0;
    if (start > size) {
        *found = 0;
        *stop = size;
        *error_position = size;
        return SLC_TRUNCATED;
    }
    while (p < size) {
        size_t length;
        if (n == cap) {
            status = SLC_MORE;
            break;
        }
        status = check(buf, size, p, &length, error_position);
        if (status != SLC_OK) break;
        fill(entries + fields * n, buf + p, p, length);
        n++;
        p += length;
    }
    *found = n;
    *stop = p;
    return status;
}

int slc_scan_batches(const uint8_t *buf, size_t size, size_t start, int64_t *entries, size_t cap,
                     size_t *found, size_t *stop, size_t *error_position) {
    return scan(check_batch, fill_batch, SLC_BATCH_FIELDS, buf, size, start, entries, cap, found,
                stop, error_position);
}

/* ---- data blocks ---- */

int slc_block_header(uint8_t *out, uint8_t compression, uint32_t raw_length, uint32_t batch_count,
                     uint32_t record_count, uint64_t stream_id, int64_t base_offset,
                     int64_t first_timestamp, int64_t max_timestamp, const uint8_t *stored,
                     size_t stored_size) {
    if (compression > COMPRESSION_MAX || stored_size > SLC_MAX_BLOCK || raw_length > SLC_MAX_BLOCK ||
        (compression == 0 && stored_size != raw_length) || batch_count == 0 ||
        batch_count > raw_length / SLC_BATCH_HEADER_SIZE || record_count < batch_count ||
        base_offset < 0 || base_offset > INT64_MAX - (int64_t)record_count ||
        max_timestamp < first_timestamp)
        return SLC_BAD_ARGUMENT;
    store32(out, BLOCK_MAGIC);
    out[12] = FORMAT_VERSION;
    out[13] = compression;
    out[14] = out[15] = 0;
    store32(out + 16, (uint32_t)stored_size);
    store32(out + 20, raw_length);
    store32(out + 24, batch_count);
    store32(out + 28, record_count);
    store64(out + 32, stream_id);
    store64(out + 40, (uint64_t)base_offset);
    store64(out + 48, (uint64_t)first_timestamp);
    store64(out + 56, (uint64_t)max_timestamp);
    store64(out + 4, frame_checksum(out, SLC_BLOCK_HEADER_SIZE, stored, stored_size));
    return SLC_OK;
}

static int check_block(const uint8_t *buf, size_t size, size_t p, size_t *length, size_t *error_position) {
    const uint8_t *h = buf + p;
    if (size - p < SLC_BLOCK_HEADER_SIZE) FAIL(SLC_TRUNCATED, p);
    if (load32(h) != BLOCK_MAGIC) FAIL(SLC_BAD_MAGIC, p);
    if (h[12] != FORMAT_VERSION) FAIL(SLC_BAD_VERSION, p + 12);
    uint32_t stored = load32(h + 16);
    if (stored > SLC_MAX_BLOCK) FAIL(SLC_BAD_LENGTH, p + 16);
    if (stored > size - p - SLC_BLOCK_HEADER_SIZE) FAIL(SLC_TRUNCATED, p + 16);
    if (load64(h + 4) != frame_checksum(h, SLC_BLOCK_HEADER_SIZE, h + SLC_BLOCK_HEADER_SIZE, stored))
        FAIL(SLC_BAD_CHECKSUM, p + 4);
    if (h[13] > COMPRESSION_MAX || load16(h + 14)) FAIL(SLC_BAD_FLAGS, p + 13);
    uint32_t raw = load32(h + 20);
    if (raw > SLC_MAX_BLOCK || raw < SLC_BATCH_HEADER_SIZE) FAIL(SLC_BAD_LENGTH, p + 20);
    if (h[13] == 0 && stored != raw) FAIL(SLC_BAD_LENGTH, p + 16);
    uint32_t batches = load32(h + 24), records = load32(h + 28);
    if (batches == 0 || batches > raw / SLC_BATCH_HEADER_SIZE) FAIL(SLC_BAD_COUNT, p + 24);
    if (records < batches) FAIL(SLC_BAD_COUNT, p + 28);
    int64_t base_offset = (int64_t)load64(h + 40);
    if (base_offset < 0 || base_offset > INT64_MAX - (int64_t)records) FAIL(SLC_BAD_OFFSET, p + 40);
    if ((int64_t)load64(h + 56) < (int64_t)load64(h + 48)) FAIL(SLC_BAD_TIMESTAMP, p + 56);
    *length = SLC_BLOCK_HEADER_SIZE + (size_t)stored;
    return SLC_OK;
}

static void fill_block(int64_t *e, const uint8_t *h, size_t p, size_t length) {
    e[0] = (int64_t)p;
    e[1] = (int64_t)length;
    e[2] = h[13];
    e[3] = load32(h + 16);
    e[4] = load32(h + 20);
    e[5] = load32(h + 24);
    e[6] = load32(h + 28);
    e[7] = (int64_t)load64(h + 32);
    e[8] = (int64_t)load64(h + 40);
    e[9] = (int64_t)load64(h + 48);
    e[10] = (int64_t)load64(h + 56);
}

int slc_scan_blocks(const uint8_t *buf, size_t size, size_t start, int64_t *entries, size_t cap,
                    size_t *found, size_t *stop, size_t *error_position) {
    return scan(check_block, fill_block, SLC_BLOCK_FIELDS, buf, size, start, entries, cap, found,
                stop, error_position);
}
