#!/usr/bin/env python3
"""Scripted kerntransport device for the guest driver's conformance tests.

A small vhost-user backend (stdlib only) that QEMU's vhost-user-device-pci
connects to. It implements just enough of proto/SPEC.md to drive the guest
driver through its paths, and deliberately misbehaves on request: it injects
malformed messages, breaks fragment sequences and credit, and sends RESET.
It also checks what the driver sends (header fields, sequence numbers,
credit) and whether it kicks when it should, and prints "VIOLATION:" lines
that run.sh turns into a failure.
Not the real device: that is vhost-device/ (kt-vhost-device).

Services the guest can open (see kt_guest_test.c for the expectations):
  echo, big (reply N bytes), slow (window of one message, never credits),
  closeafter, closemsgsize (closes with KT_ERR_MSGSIZE), refuse (EACCES), silent (never answers), reset (RESET on
  "reset-now"; on "reset-tight" the last data and the RESET are both used
  before the guest is notified), firehose (CREDIT_UPDATEs as fast as the
  guest posts rx buffers, until the queues stop), breakring (after
  OPEN_OK, a used rx entry with an id the guest never posted, on the
  channel's pair), breaktx (on a message, a used tx entry with an id the
  guest never posted, on the channel's pair), lazytx
  (credit of 64 MiB, tx completed only every 50 ms while it is open;
  "lazy-done" is answered with the payload bytes received), sink (takes
  messages, never answers), ragged (echoes in fragments of at most 1000
  bytes, shorter than the buffers), noclose
  (echoes, never answers the guest's CLOSE), stall (window of one message; on the first message the
  device stops completing tx buffers, floods CREDIT_REQUEST, sends
  "flood-done" and resumes a few seconds after the guest took it all),
  mal-noise, mal-seq, mal-frag, mal-credit,
  mal-state (illegal channel transitions: after its OPEN_OK a second
  OPEN_OK and an OPEN_ERR; echoes; on "close" sends "bye", CLOSE, then
  DATA after that CLOSE and a second CLOSE),
  dial:<name> (the host opens <name> in the guest and reports on this
  channel), hold:<name> (the host opens <name> and keeps it open until this
  channel closes), listeners (with KT_LISTEN_NOTIFY=1: answers each message
  with the names the driver announced, sorted, comma-separated, "-" if
  none), txorder (tx order across channels: "hold" stops taking tx
  buffers and answers "held" ("hold+credit": first sends 3 messages of
  60000 bytes on every other txorder channel); taking resumes once a "q1"
  of a txorder channel is in the tx ring, or the ring is full (10 s at
  most); "q1" is then answered "ahead <n> credit <m>", n the DATA
  messages of other txorder channels taken since the resume before it, m
  how many of them came before the first CREDIT_UPDATE of one (-1: none);
  "count" is answered "got <n>", the messages this
  channel sent before it). Anything else: ENOENT.

With KT_LISTEN_NOTIFY=1 (the "notify" run) the device offers
KT_F_LISTEN_NOTIFY and keeps the names LISTEN/UNLISTEN announce; it forgets
them on RESET and when a queue is stopped (driver reset, unbind). A
LISTEN/UNLISTEN without the feature, off channel 0, with a bad name, a
LISTEN of a name already announced or an UNLISTEN of one not announced is
a violation.

With KT_MQ=N (N >= 1; the "mq" runs) the device offers KT_F_MULTIQUEUE
with max_queue_pairs N (config space is 20 bytes either way) and serves
every pair whose queues the driver set up. It keeps SPEC 1.4: a channel
lives on the pair its OPEN came on, every later message of it must come
on that pair (else a violation), LISTEN/UNLISTEN only on pair 0; what it
sends for a channel goes on the channel's pair, a reply to a message for
an unknown channel on the pair that message came on. Its services:
  pair (answers each message with "pair <k> " + the message, k the
  channel's pair), wrongpair (echoes; on "go" sends, on another pair than
  the channel's, a DATA "stray", a CREDIT_REQUEST and a CLOSE for it, then
  "good" on its own pair), dial1:<name> (as dial:, the host's OPEN on
  pair 1 when the driver set up two pairs).

With KT_HOSTILE=1 (the "hostile" run) the device also offers the backend
request channel (for config-change interrupts) and serves hostile:<attack>;
each OPEN of one starts that ring-level attack (see HOSTILE below).

Environment: KT_MAX_MSG, KT_RX_BUF (config space), KT_EVENT_IDX and
KT_INDIRECT (0 to stop offering the ring feature), KT_HOSTILE,
KT_LISTEN_NOTIFY, KT_MQ.

usage: fake_device.py <vhost-user socket path>
"""
import array
import mmap
import os
import select
import socket
import struct
import sys
import time

HDR = struct.Struct('<IHHIIIIII')
MSG_OPEN, MSG_OPEN_OK, MSG_OPEN_ERR, MSG_DATA, MSG_CLOSE, MSG_CU, MSG_CR, MSG_RESET = range(1, 9)
MSG_LISTEN, MSG_UNLISTEN = 9, 10
F_LISTEN_NOTIFY = 1
F_MULTIQUEUE = 2
MAX_PAIRS = 16
NUM_VQS = 1 + 2 * MAX_PAIRS
F_MORE = 1
MAX_MSG = int(os.environ.get('KT_MAX_MSG', '65536'))
RX_BUF = int(os.environ.get('KT_RX_BUF', '4096'))
EVENT_IDX = os.environ.get('KT_EVENT_IDX', '1') == '1'
INDIRECT = os.environ.get('KT_INDIRECT', '1') == '1'
STALL_FLOOD = 10000
# Seconds a kick may stay owed before it counts as missed (see missed_kicks).
KICK_GRACE = 2.0
HOSTILE = os.environ.get('KT_HOSTILE', '0') == '1'
LISTEN_NOTIFY = os.environ.get('KT_LISTEN_NOTIFY', '0') == '1'
MQ = int(os.environ.get('KT_MQ', '0'))


def rx_index(k):
    """Queue index of pair k's rx queue (SPEC 1.2)."""
    return 2 * k + 1 if k else 0


def tx_index(k):
    return 2 * k + 2 if k else 1
# hostile:<attack> - what each does once its OPEN_OK is queued:
#   biglen    three used rx entries whose length is past the buffer
#   credit    3000 CREDIT_REQUEST and 3000 CREDIT_UPDATE on the channel
#   openflood 300 OPENs to the guest listener "hl", 100 to "nobody"
#   cfgstorm  500 config-change interrupts (backend request channel)
#   resetflood 50 RESET events
#   evlie     event queue: used lengths 0xffffffff and 8 (a RESET header),
#             then one used id twice (an unknown event)
#   dupid     one used rx id twice in a row
#   jump      the used index jumps 1000 ahead, then an id never posted
#   breakstorm  an rx id never posted right after each of the next 12
#             ring set-ups (the guest gives up after 9, is rebound)
HOSTILE_ATTACKS = ('biglen', 'credit', 'openflood', 'cfgstorm', 'resetflood',
                   'evlie', 'dupid', 'jump', 'breakstorm')

def log(*a):
    print('[fake_device]', *a, flush=True)


def violation(what):
    print('VIOLATION:', what, flush=True)

class Mem:
    def __init__(self):
        self.regions = []  # (gpa, size, uaddr, mm, off)
    def set(self, regions):
        self.regions = regions
    def _find(self, addr, n, user):
        for gpa, size, uaddr, mm, off in self.regions:
            base = uaddr if user else gpa
            if base <= addr and addr + n <= base + size:
                return mm, off + addr - base
        raise ValueError('bad addr %#x' % addr)
    def read(self, addr, n, user=False):
        mm, o = self._find(addr, n, user)
        return mm[o:o + n]
    def write(self, addr, data, user=False):
        mm, o = self._find(addr, len(data), user)
        mm[o:o + len(data)] = data
    def u2g(self, uaddr):
        for gpa, size, ua, mm, off in self.regions:
            if ua <= uaddr < ua + size:
                return gpa + uaddr - ua
        raise ValueError('bad uaddr')

class VQ:
    def __init__(self, dev, idx):
        self.dev, self.idx = dev, idx
        self.num = 0; self.desc = self.avail = self.used = 0
        self.last_avail = 0; self.used_idx = 0
        self.kick = None; self.call = None; self.enabled = False; self.started = False
        self.storm_done = True
        self.signalled = None  # used index at the last notification check
    def ready(self):
        return self.enabled and self.started and self.num
    def avail_idx(self):
        return struct.unpack('<H', self.dev.mem.read(self.avail + 2, 2))[0]
    def has(self):
        return self.ready() and self.avail_idx() != self.last_avail
    def pop(self):
        m = self.dev.mem
        if not self.has():
            return None
        head = struct.unpack('<H', m.read(self.avail + 4 + 2 * (self.last_avail % self.num), 2))[0]
        self.last_avail = (self.last_avail + 1) & 0xffff
        segs = []
        self._walk(self.desc, self.num, head, segs, True)
        return head, segs
    def peek(self):
        """The chains made available and not yet taken, as bytes."""
        m, out = self.dev.mem, []
        for k in range((self.avail_idx() - self.last_avail) & 0xffff):
            slot = (self.last_avail + k) % self.num
            head = struct.unpack('<H', m.read(self.avail + 4 + 2 * slot, 2))[0]
            segs = []
            self._walk(self.desc, self.num, head, segs, True)
            out.append(b''.join(m.read(a, l) for a, l, w in segs))
        return out
    def _walk(self, table, n, i, segs, top):
        m = self.dev.mem
        for _ in range(n + 1):
            addr, ln, flags, nxt = struct.unpack('<QIHH', m.read(table + 16 * i, 16))
            if flags & 4:
                self._walk(addr, ln // 16, 0, segs, False)
            else:
                segs.append((addr, ln, bool(flags & 2)))
            if not flags & 1:
                return
            i = nxt
        raise ValueError('loop')
    def push(self, head, ln):
        m = self.dev.mem
        m.write(self.used + 4 + 8 * (self.used_idx % self.num), struct.pack('<II', head, ln))
        self.used_idx = (self.used_idx + 1) & 0xffff
        m.write(self.used + 2, struct.pack('<H', self.used_idx))
        if self.dev.event_idx:
            m.write(self.used + 4 + 8 * self.num, struct.pack('<H', self.last_avail))
    def set_avail_event(self):
        if self.dev.event_idx and self.ready():
            self.dev.mem.write(self.used + 4 + 8 * self.num, struct.pack('<H', self.last_avail))
    def is_tx(self):
        return self.idx == 1 or (self.idx > 2 and self.idx % 2 == 0)
    def notify(self):
        if self.call is not None and (not self.is_tx() or self.irq_wanted()):
            os.write(self.call, struct.pack('<Q', 1))
    def irq_wanted(self):
        """The tx queue honours the driver's interrupt suppression as vhost
        does (used_event with EVENT_IDX, else VRING_AVAIL_F_NO_INTERRUPT):
        a driver that waits for a tx interrupt it did not arm hangs here.
        (The other queues always interrupt: the hostile attacks rely on it.)
        The interpreter's work between the used index store and this load
        stands in for vhost's smp_mb()."""
        m = self.dev.mem
        old, new = self.signalled, self.used_idx
        self.signalled = new
        if not self.dev.event_idx:
            return not struct.unpack('<H', m.read(self.avail, 2))[0] & 1
        if old is None:
            return True
        ev = struct.unpack('<H', m.read(self.avail + 4 + 2 * self.num, 2))[0]
        return (new - ev - 1) & 0xffff < (new - old) & 0xffff

def hdr(ch, typ, ln=0, msg_len=None, seq=0, flags=0, buf_alloc=0, fwd=0, arg=0):
    return HDR.pack(ch, typ, flags, ln, ln if msg_len is None else msg_len, seq, buf_alloc, fwd, arg)

class Chan:
    def __init__(self, cid, name, svc):
        self.id, self.name, self.svc = cid, name, svc
        self.buf_alloc = 2 * (MAX_MSG + 32); self.fwd = 0
        self.peer_buf = 0; self.peer_fwd = 0; self.tx_cnt = 0
        self.tx_seq = 0; self.rx_seq = 0
        self.out = []  # pending host->guest payloads (credit)
        self.open = True; self.expect = []; self.report = None; self.got = 0
        self.close_sent = False
        self.pair = 0  # SPEC 1.4: the pair its OPEN travelled on
        self.expect_send = []
        self.rx_cnt = 0
        self.held = None

class Dev:
    def __init__(self, path):
        self.mem = Mem(); self.vqs = [VQ(self, i) for i in range(NUM_VQS)]
        self.cur_pair = 0  # the pair of the tx message being handled
        self.features = 0; self.event_idx = False
        self.rxq = []  # raw (hdr_bytes_fn, payload) messages to put in rx
        self.evq = []
        self.chans = {}
        self.next_host_id = 0x80000001
        self.stats = {}
        self.timers = []
        self.rx_starved = False
        self.tx_stalled = False
        self.txorder = None  # txorder: hold, then count what goes ahead
        self.lazy_tx = None  # lazytx open: tx is next completed at this time
        self.firehose = None
        self.break_rx = None  # breakring: the pair whose rx ring breaks
        self.rx_attack = None
        self.ev_attack = False
        self.break_storm = 0
        self.backend = None
        self.listeners = set()  # names announced with LISTEN (KT_LISTEN_NOTIFY)
        self.owed = {}
        self.path = path
        if os.path.exists(path):
            os.unlink(path)
        self.srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.srv.bind(path); self.srv.listen(1)

    # ---- vhost-user ----
    def recv_msg(self):
        fds = array.array('i')
        data, anc, flags, _ = self.conn.recvmsg(12, socket.CMSG_SPACE(8 * 4))
        if not data:
            return None
        for lvl, typ, d in anc:
            if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                fds.frombytes(d[:len(d) - len(d) % 4])
        req, fl, size = struct.unpack('<III', data)
        payload = b''
        while len(payload) < size:
            chunk, anc, _, _ = self.conn.recvmsg(size - len(payload), socket.CMSG_SPACE(8 * 4))
            for lvl, typ, d in anc:
                if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
                    fds.frombytes(d[:len(d) - len(d) % 4])
            payload += chunk
        return req, fl, payload, list(fds)

    def reply(self, req, payload):
        self.conn.sendall(struct.pack('<III', req, 0x5, len(payload)) + payload)

    def handle_vu(self):
        m = self.recv_msg()
        if m is None:
            log('frontend disconnected'); sys.exit(0)
        req, fl, p, fds = m
        if req == 1:
            f = (1 << 32) | (1 << 30) | 1
            if EVENT_IDX: f |= 1 << 29
            if INDIRECT: f |= 1 << 28
            if LISTEN_NOTIFY: f |= 1 << F_LISTEN_NOTIFY
            if MQ: f |= 1 << F_MULTIQUEUE
            self.reply(req, struct.pack('<Q', f))
        elif req == 2:
            self.features = struct.unpack('<Q', p[:8])[0]
            self.event_idx = bool(self.features & (1 << 29))
            log('features %#x' % self.features)
        elif req == 15:
            pf = (1 << 0) | (1 << 9)
            if HOSTILE:
                pf |= 1 << 5  # BACKEND_REQ: config-change messages
            self.reply(req, struct.pack('<Q', pf))
        elif req == 21:
            if self.backend is not None:
                self.backend.close()
            self.backend = socket.socket(fileno=fds[0]) if fds else None
        elif req == 17:
            self.reply(req, struct.pack('<Q', NUM_VQS))
        elif req == 5:
            n = struct.unpack('<I', p[:4])[0]
            regs = []
            for i in range(n):
                gpa, size, ua, off = struct.unpack('<QQQQ', p[8 + 32 * i:8 + 32 * (i + 1)])
                mm = mmap.mmap(fds[i], size + off, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                os.close(fds[i])
                regs.append((gpa, size, ua, mm, off))
            self.mem.set(regs)
        elif req == 8:
            i, num = struct.unpack('<II', p[:8]); self.vqs[i].num = num
        elif req == 9:
            i, fl2, d, u, a, _ = struct.unpack('<IIQQQQ', p[:40])
            q = self.vqs[i]
            q.desc, q.used, q.avail = self.mem.u2g(d), self.mem.u2g(u), self.mem.u2g(a)
            q.started = True
            q.storm_done = False
        elif req == 10:
            i, base = struct.unpack('<II', p[:8]); self.vqs[i].last_avail = base; self.vqs[i].used_idx = base
            self.vqs[i].signalled = None
        elif req == 11:
            i = struct.unpack('<I', p[:4])[0]; q = self.vqs[i]
            q.started = False
            if self.listeners:
                log('queue %d stopped: listeners forgotten' % i)
                self.listeners.clear()
            if self.firehose is not None:
                log('firehose stops: queue %d stopped' % i)
                fid = self.firehose.id
                self.rxq = [m for m in self.rxq if m[0] != fid]
                self.firehose = None
            self.reply(req, struct.pack('<II', i, q.last_avail))
        elif req in (12, 13, 14):
            v = struct.unpack('<Q', p[:8])[0]; i = v & 0xff
            fd = fds[0] if fds else None
            if req == 12:
                self.vqs[i].kick = fd
            elif req == 13:
                self.vqs[i].call = fd
            elif fd is not None:
                os.close(fd)
        elif req == 18:
            i, en = struct.unpack('<II', p[:8]); self.vqs[i].enabled = bool(en)
        elif req == 24:
            off, size, flg = struct.unpack('<III', p[:12])
            cfg = struct.pack('<IIIIHH', MAX_MSG, 64, RX_BUF, 7, MQ, 0)
            self.reply(req, struct.pack('<III', off, size, flg) + cfg[off:off + size].ljust(size, b'\0'))
        elif req in (3, 4, 16, 6, 7):
            pass
        else:
            log('unhandled vhost-user request', req)
            if fl & 0x8:
                self.reply(req, struct.pack('<Q', 0))

    # ---- device ----
    def send_rx(self, ch, typ, payload=b'', **kw):
        c = kw.get('chan')
        kw.setdefault('pair', c.pair if c else self.cur_pair)
        self.rxq.append((ch, typ, payload, kw))

    def pairs(self):
        """The pairs whose queues the driver set up."""
        return [k for k in range(MAX_PAIRS)
                if self.vqs[rx_index(k)].ready() and self.vqs[tx_index(k)].ready()]

    def ctrl(self, c, typ, arg=0):
        self.send_rx(c.id, typ, b'', chan=c, arg=arg)

    def host_send(self, c, payload):
        c.out.append(payload)
        self.flush_chan(c)

    def flush_chan(self, c):
        while c.out and c.open:
            p = c.out[0]
            cost = 32 + len(p)
            if ((c.tx_cnt - c.peer_fwd) & 0xffffffff) + cost > c.peer_buf and not c.svc.startswith('mal-credit'):
                return
            c.out.pop(0)
            c.tx_cnt = (c.tx_cnt + cost) & 0xffffffff
            frag = {'frag': 1000} if c.svc == 'ragged' else {}
            self.send_rx(c.id, MSG_DATA, p, chan=c, seq=c.tx_seq, **frag)
            c.tx_seq = (c.tx_seq + 1) & 0xffffffff

    def fill_rx(self, notify=True):
        fh = self.firehose
        if fh is not None and len(self.rxq) < 512:
            for _ in range(512):
                self.ctrl(fh, MSG_CU)
        for k in range(MAX_PAIRS):
            q = self.vqs[rx_index(k)]
            if k and not q.ready():
                continue
            self.fill_rx_pair(k, q, notify)

    def fill_rx_pair(self, k, q, notify):
        """Puts the messages of pair k, oldest first, in its rx queue q."""
        did = False
        i = 0
        while q.ready():
            while i < len(self.rxq) and self.rxq[i][3]['pair'] != k:
                i += 1
            if i == len(self.rxq):
                break
            ch, typ, payload, kw = self.rxq[i]
            raw = kw.get('raw')
            c = kw.get('chan')
            ba = kw.get('ba', c.buf_alloc if c else 0)
            fw = kw.get('fw', c.fwd if c else 0)
            off = kw.get('off', 0)
            # one buffer
            if not q.has():
                break
            head, segs = q.pop()
            cap = sum(l for a, l, w in segs if w)
            if raw is not None:
                data = raw; used = kw.get('used', len(raw))
                self.rxq.pop(i)
            else:
                room = min(cap - 32, kw.get('frag', cap))
                chunk = payload[off:off + room]
                more = off + len(chunk) < len(payload)
                if typ != MSG_DATA:
                    more = False
                h = hdr(ch, typ, len(chunk), len(payload), kw.get('seq', 0), F_MORE if more else 0, ba, fw, kw.get('arg', 0))
                data = h + chunk; used = len(data)
                if more:
                    self.rxq[i] = (ch, typ, payload, dict(kw, off=off + len(chunk), ba=ba, fw=fw))
                else:
                    self.rxq.pop(i)
            pos = 0
            for a, l, w in segs:
                if not w:
                    continue
                part = data[pos:pos + l]
                if part:
                    self.mem.write(a, part)
                pos += len(part)
            q.push(head, used); did = True
        if k == 0 or self.break_rx == k:
            did = self.rx_lies(k, q) or did
        q.set_avail_event()
        if did and notify:
            q.notify()

    def rx_lies(self, k, q):
        """breakring (on the channel's pair k), breakstorm and the hostile
        rx attacks (pair 0)."""
        did = False
        if (self.break_rx == k and q.ready()
                and not any(m[3]['pair'] == k for m in self.rxq)):
            self.break_rx = None
            q.push(q.num + 5, 32); did = True
        if k:
            return did
        if self.break_storm and not q.storm_done and q.ready() and q.has():
            q.storm_done = True
            self.break_storm -= 1
            log('breakstorm: a used id never posted, %d to go' % self.break_storm)
            q.push(q.num + 5, 32); did = True
        if self.rx_attack and not self.rxq and q.ready() and q.has():
            did = self.hostile_rx(q) or did
        return did

    def fill_ev(self):
        q = self.vqs[2]; did = False
        if self.ev_attack and not self.evq and q.ready():
            n = q.avail_idx() - q.last_avail & 0xffff
            if n >= 3:
                self.ev_attack = False
                head, segs = q.pop()
                q.push(head, 0xffffffff)
                head, segs = q.pop()
                self.mem.write(segs[0][0], hdr(0, MSG_RESET))
                q.push(head, 8)
                head, segs = q.pop()
                self.mem.write(segs[0][0], hdr(0, 99))
                q.push(head, 32)
                q.push(head, 32)
                did = True
        while self.evq and q.has():
            head, segs = q.pop()
            data = self.evq.pop(0)
            self.mem.write(segs[0][0], data)
            q.push(head, len(data)); did = True
        q.set_avail_event()
        if did:
            q.notify()

    def process_tx(self):
        if self.lazy_tx is not None:
            # lazytx: complete tx in batches, every 50 ms.
            if time.time() < self.lazy_tx:
                return
            self.lazy_tx = time.time() + 0.05
        for k in range(MAX_PAIRS):
            q = self.vqs[tx_index(k)]
            if not q.ready():
                continue
            did = False
            while q.has() and not self.tx_stalled:
                head, segs = q.pop()
                data = b''.join(self.mem.read(a, l) for a, l, w in segs)
                q.push(head, 0); did = True
                self.cur_pair = k
                try:
                    self.on_msg(data)
                finally:
                    self.cur_pair = 0
            q.set_avail_event()
            if did:
                q.notify()

    def on_msg(self, data):
        if len(data) < 32:
            log('short tx'); return
        cid, typ, flags, ln, msg_len, seq, ba, fw, arg = HDR.unpack(data[:32])
        payload = data[32:]
        if len(payload) != ln:
            violation('len %d but %d payload bytes' % (ln, len(payload)))
            return
        if flags or msg_len != ln or (typ != MSG_DATA and seq):
            violation('bad header fields: type %d flags %#x len %d msg_len %d seq %d'
                      % (typ, flags, ln, msg_len, seq))
        if ln > MAX_MSG or (ln and typ not in (MSG_OPEN, MSG_DATA, MSG_LISTEN, MSG_UNLISTEN)):
            violation('bad length %d for type %d' % (ln, typ))
        self.stats[typ] = self.stats.get(typ, 0) + 1
        if typ in (MSG_LISTEN, MSG_UNLISTEN):
            if self.cur_pair:
                violation('type %d on pair %d (pair 0 only)' % (typ, self.cur_pair))
            self.on_listen(cid, typ, payload)
            return
        c = self.chans.get(cid)
        if c is not None and typ != MSG_OPEN and c.pair != self.cur_pair:
            violation('channel %#x: type %d on pair %d, it lives on pair %d'
                      % (cid, typ, self.cur_pair, c.pair))
        if typ == MSG_OPEN:
            name = payload.decode()
            log('OPEN %#x %s pair %d' % (cid, name, self.cur_pair))
            self.guest_open(cid, name, ba, fw)
            return
        if c is None:
            log('msg type %d for unknown channel %#x' % (typ, cid))
            if typ != MSG_CLOSE:
                self.send_rx(cid, MSG_CLOSE, b'', arg=104)
            return
        c.peer_buf, c.peer_fwd = ba, fw
        if typ == MSG_OPEN_OK:
            log('guest accepted %#x' % cid)
            for p in c.expect_send:
                self.host_send(c, p)
        elif typ == MSG_OPEN_ERR:
            log('guest refused %#x: %d' % (cid, arg))
            del self.chans[cid]
            if c.report:
                self.host_send(c.report, b'dial refused %d' % arg)
        elif typ == MSG_DATA:
            if seq != c.rx_seq & 0xffffffff:
                violation('channel %#x: seq %d, expected %d' % (cid, seq, c.rx_seq))
            c.rx_seq += 1
            c.rx_cnt = (c.rx_cnt + 32 + ln) & 0xffffffff
            if ((c.rx_cnt - c.fwd) & 0xffffffff) > c.buf_alloc:
                violation('channel %#x: guest sent beyond the credit granted' % cid)
            if not c.svc.startswith('slow') and c.svc != 'stall':
                c.fwd = (c.fwd + 32 + ln) & 0xffffffff
            self.on_data(c, payload)
        elif typ == MSG_CLOSE and c.svc == 'noclose':
            log('guest CLOSE %#x: never answered (noclose)' % cid)
        elif typ == MSG_CLOSE:
            log('guest CLOSE %#x arg %d' % (cid, arg))
            if c.svc == 'lazytx':
                self.lazy_tx = None
            if not c.close_sent:
                self.ctrl(c, MSG_CLOSE)
            del self.chans[cid]
            h = c.held
            if h is not None and h.id in self.chans:
                self.ctrl(h, MSG_CLOSE)
                h.close_sent = True
            if c.report:
                self.host_send(c.report, b'dial ok' if not c.expect and c.got else b'dial fail: closed early, %d left' % len(c.expect))
        elif typ == MSG_CR:
            self.ctrl(c, MSG_CU)
        elif typ == MSG_CU:
            t = self.txorder
            if (c.svc == 'txorder' and t is not None and t['ahead'] is not None
                    and t['credit'] < 0):
                t['credit'] = t['ahead']
        self.flush_chan(c)

    def on_listen(self, cid, typ, payload):
        what = 'LISTEN' if typ == MSG_LISTEN else 'UNLISTEN'
        if not self.features & (1 << F_LISTEN_NOTIFY):
            violation('%s without KT_F_LISTEN_NOTIFY' % what)
            return
        if cid != 0:
            violation('%s on channel %#x' % (what, cid))
        try:
            name = payload.decode()
        except UnicodeDecodeError:
            name = None
        if not name or len(payload) > 63 or any(ord(ch) < 0x20 or ord(ch) == 0x7f for ch in name):
            violation('%s with a bad name %r' % (what, payload))
            return
        log('%s %s' % (what, name))
        if typ == MSG_LISTEN:
            if name in self.listeners:
                violation('LISTEN %s: already announced' % name)
            self.listeners.add(name)
        else:
            if name not in self.listeners:
                violation('UNLISTEN %s: not announced' % name)
            self.listeners.discard(name)

    def guest_open(self, cid, name, ba, fw):
        if name in ('refuse',):
            self.send_rx(cid, MSG_OPEN_ERR, b'', arg=13); return
        if name == 'silent':
            return
        known = ('echo', 'big', 'slow', 'stall', 'firehose', 'breakring', 'noclose',
                 'txorder',
                 'breaktx', 'lazytx', 'sink', 'ragged',
                 'closeafter',
                 'closemsgsize', 'reset', 'mal-noise', 'mal-seq', 'mal-credit', 'mal-frag',
                 'mal-state', 'listeners', 'pair', 'wrongpair')
        hostile = HOSTILE and name.startswith('hostile:') and name[8:] in HOSTILE_ATTACKS
        if (name not in known and not hostile and not name.startswith('dial:')
                and not name.startswith('dial1:') and not name.startswith('hold:')):
            self.send_rx(cid, MSG_OPEN_ERR, b'', arg=2); return
        c = Chan(cid, name, name)
        c.pair = self.cur_pair
        c.peer_buf, c.peer_fwd = ba, fw
        if name in ('slow', 'stall'):
            c.buf_alloc = MAX_MSG + 32
        if name == 'lazytx':
            # Credit far beyond the guest's window: only its own
            # in-flight bound (and our late completions) holds it back.
            c.buf_alloc = 64 << 20
            c.bytes = 0
            self.lazy_tx = time.time()
        self.chans[cid] = c
        self.ctrl(c, MSG_OPEN_OK)
        if hostile:
            self.hostile(c, name[8:])
        elif name == 'reset':
            self.host_send(c, b'before-reset')
        elif name == 'breakring':
            log('breakring: a used id the guest never posted follows (pair %d)' % c.pair)
            self.break_rx = c.pair
        elif name == 'firehose':
            log('firehose on %#x' % cid)
            self.firehose = c
        elif name == 'mal-noise':
            X = lambda **kw: self.send_rx(0, 0, b'', **kw)
            X(raw=hdr(cid, MSG_CU, flags=0x8000, buf_alloc=c.buf_alloc))
            X(raw=hdr(cid, 99))
            X(raw=hdr(0, MSG_RESET))
            X(raw=hdr(0x1234, MSG_DATA, 4) + b'abcd')
            X(raw=hdr(cid, MSG_CU)[:10], used=10)
            X(raw=hdr(0x4321, MSG_DATA, 100) + b'x' * 10)
            X(raw=hdr(0x80000077, MSG_OPEN, 3) + b'a\x01b')
            X(raw=hdr(0x00000077, MSG_OPEN, 3) + b'abc')
            X(raw=hdr(cid, MSG_CU, 4) + b'zzzz')
            X(raw=hdr(cid, MSG_OPEN_OK))
        elif name == 'mal-state':
            # Illegal for an open channel: counted, the channel untouched.
            self.ctrl(c, MSG_OPEN_OK)
            self.ctrl(c, MSG_OPEN_ERR, 13)
        elif name == 'mal-seq':
            self.send_rx(cid, MSG_DATA, b'good', chan=c, seq=0)
            self.send_rx(cid, MSG_DATA, b'bad', chan=c, seq=5)
            c.tx_seq = 6
        elif name == 'mal-frag':
            self.send_rx(cid, MSG_DATA, b'ok1', chan=c, seq=0)
            self.send_rx(0, 0, b'', raw=hdr(cid, MSG_DATA, 10, 100, 1, F_MORE, c.buf_alloc) + b'f' * 10)
            self.send_rx(0, 0, b'', raw=hdr(cid, MSG_CU, buf_alloc=c.buf_alloc))
            c.tx_seq = 2
        elif name == 'mal-credit':
            for i in range(8):
                self.host_send(c, bytes([65 + i]) * 60000)
        elif name.startswith('hold:'):
            target = name[5:]
            hid = self.next_host_id; self.next_host_id += 1
            d = Chan(hid, target, 'held')
            d.expect_send = [b'held']
            c.held = d
            self.chans[hid] = d
            self.send_rx(hid, MSG_OPEN, target.encode(), chan=d)
        elif name.startswith('dial:') or name.startswith('dial1:'):
            target = name.split(':', 1)[1]
            hid = self.next_host_id; self.next_host_id += 1
            d = Chan(hid, target, 'dialed')
            if name.startswith('dial1:') and len(self.pairs()) > 1:
                d.pair = 1
            log('host opens %#x %s on pair %d' % (hid, target, d.pair))
            d.report = c
            d.expect_send = [b'hello', b'x' * 5000, b'', bytes(range(256)) * 256]
            d.expect = list(d.expect_send)
            self.chans[hid] = d
            self.send_rx(hid, MSG_OPEN, target.encode(), chan=d)

    def on_data(self, c, p):
        if c.svc == 'reset' and p == b'reset-now':
            self.host_send(c, b'last-data')
            self.timers.append((time.time() + 0.5, self.do_reset))
        elif c.svc == 'reset' and p == b'reset-tight':
            # The data is used first, then the RESET; only then does the
            # guest hear of either, so it sees both at once.
            self.host_send(c, b'last-data')
            self.fill_rx(notify=False)
            self.do_reset()
            self.fill_ev()
            for k in self.pairs():
                self.vqs[rx_index(k)].notify()
        elif c.svc == 'breaktx':
            log('breaktx: a used tx id the guest never posted (pair %d)' % c.pair)
            q = self.vqs[tx_index(c.pair)]
            q.push(q.num + 7, 0)
            q.notify()
        elif c.svc == 'stall' and not self.tx_stalled:
            log('stall: tx stops, CREDIT_REQUEST flood on %#x' % c.id)
            self.tx_stalled = True
            for _ in range(STALL_FLOOD):
                self.ctrl(c, MSG_CR)
            self.host_send(c, b'flood-done')
            self.timers.append((time.time() + 0.5, self.stall_resume))
        elif c.svc == 'mal-state' and p == b'close':
            # Our CLOSE, then DATA after it (illegal: counted) and a
            # second CLOSE (for a channel the guest has let go: discarded).
            self.host_send(c, b'bye')
            self.ctrl(c, MSG_CLOSE); c.close_sent = True
            self.send_rx(c.id, MSG_DATA, b'late', chan=c, seq=c.tx_seq)
            c.tx_seq += 1
            self.ctrl(c, MSG_CLOSE)
        elif c.svc == 'txorder':
            self.txorder_data(c, p)
        elif c.svc == 'pair':
            self.host_send(c, b'pair %d ' % c.pair + p)
        elif c.svc == 'wrongpair' and p == b'go':
            other = [k for k in self.pairs() if k != c.pair]
            if other:
                log('wrongpair: %#x (pair %d) gets DATA, CREDIT_REQUEST, CLOSE on pair %d'
                    % (c.id, c.pair, other[0]))
                self.send_rx(c.id, MSG_DATA, b'stray', chan=c, seq=c.tx_seq, pair=other[0])
                self.send_rx(c.id, MSG_CR, b'', chan=c, pair=other[0])
                self.send_rx(c.id, MSG_CLOSE, b'', chan=c, pair=other[0])
            self.host_send(c, b'good')
        elif c.svc in ('echo', 'mal-noise', 'noclose', 'ragged', 'mal-state', 'wrongpair'):
            self.host_send(c, p)
        elif c.svc == 'lazytx' and p == b'lazy-done':
            self.host_send(c, b'%d' % c.bytes)
        elif c.svc == 'lazytx':
            c.bytes += len(p)
        elif c.svc in ('closeafter', 'closemsgsize'):
            self.host_send(c, p)
            arg = 90 if c.svc == 'closemsgsize' else 0
            self.ctrl(c, MSG_CLOSE, arg); c.close_sent = True
        elif c.svc == 'big':
            n = int(p.decode())
            self.host_send(c, bytes((i * 7) & 0xff for i in range(n)))
        elif c.svc == 'dialed':
            exp = c.expect.pop(0) if c.expect else None
            c.got += 1
            if p != exp:
                log('dial mismatch on %#x: got %d bytes, want %s' % (c.id, len(p), None if exp is None else len(exp)))
                c.expect = [None]
            if not c.expect:
                self.ctrl(c, MSG_CLOSE); c.close_sent = True
        elif c.svc == 'listeners':
            self.host_send(c, (','.join(sorted(self.listeners)) or '-').encode())
        elif c.svc.startswith('dial:') and p == b'stats':
            self.host_send(c, repr(self.stats).encode())

    def txorder_data(self, c, p):
        """txorder: see the module docstring."""
        t = self.txorder
        if p in (b'hold', b'hold+credit') and not self.tx_stalled:
            q = self.vqs[tx_index(c.pair)]
            log('txorder: tx taking stops')
            self.tx_stalled = 'txorder'
            self.txorder = {'q': q, 'until': time.time() + 10, 'ahead': None,
                            'credit': -1}
            if p == b'hold+credit':
                for o in self.chans.values():
                    if o.svc == 'txorder' and o is not c:
                        for _ in range(3):
                            self.host_send(o, b'c' * 60000)
            self.host_send(c, b'held')
            self.timers.append((time.time() + 0.1, self.txorder_watch))
        elif p == b'q1' and t is not None and t['ahead'] is not None:
            log('txorder: %d messages of other channels ahead of q1, %d before a CREDIT_UPDATE'
                % (t['ahead'], t['credit']))
            self.host_send(c, b'ahead %d credit %d' % (t['ahead'], t['credit']))
            self.txorder = None
        elif p == b'count':
            self.host_send(c, b'got %d' % c.got)
        else:
            c.got += 1
            if t is not None and t['ahead'] is not None and p != b'q0':
                t['ahead'] += 1

    def txorder_watch(self):
        """txorder: resumes taking tx once the driver stopped adding."""
        t = self.txorder
        if t is None or self.tx_stalled != 'txorder':
            return
        now, q = time.time(), t['q']
        waiting = q.peek()
        q1 = any(len(d) == 34 and d[32:] == b'q1'
                 and getattr(self.chans.get(HDR.unpack(d[:32])[0]), 'svc', None) == 'txorder'
                 for d in waiting)
        if not q1 and len(waiting) < q.num and now < t['until']:
            self.timers.append((now + 0.05, self.txorder_watch))
            return
        log('txorder: tx taking resumes (%d chains waiting, q1 %s)'
            % (len(waiting), 'among them' if q1 else 'not there'))
        t['ahead'] = 0
        self.tx_stalled = False

    def stall_resume(self):
        """Resumes tx a few seconds after the guest took the whole flood."""
        if self.rxq:
            self.timers.append((time.time() + 0.5, self.stall_resume))
        elif self.tx_stalled is True:
            self.tx_stalled = 'ending'
            self.timers.append((time.time() + 4, self.stall_resume))
        else:
            log('stall: tx resumes')
            self.tx_stalled = False

    def do_reset(self):
        log('sending RESET')
        self.evq.append(hdr(0, MSG_RESET))
        self.chans.clear()
        # A new device knows no listeners: the driver announces them again.
        self.listeners.clear()
        self.lazy_tx = None
        if HOSTILE:
            # Like the real device: nothing of the old channels follows.
            self.rxq = []

    def hostile(self, c, attack):
        """Starts one ring-level attack (HOSTILE_ATTACKS)."""
        log('hostile: %s' % attack)
        if attack in ('biglen', 'dupid', 'jump'):
            self.rx_attack = attack
        elif attack == 'credit':
            for _ in range(3000):
                self.ctrl(c, MSG_CR)
                self.ctrl(c, MSG_CU)
        elif attack == 'openflood':
            for i in range(400):
                hid = self.next_host_id; self.next_host_id += 1
                target = 'hl' if i < 300 else 'nobody'
                d = Chan(hid, target, 'flood')
                self.chans[hid] = d
                self.send_rx(hid, MSG_OPEN, target.encode(), chan=d)
        elif attack == 'cfgstorm':
            if self.backend is None:
                violation('cfgstorm: no backend request channel')
                return
            for _ in range(500):
                self.backend.sendall(struct.pack('<III', 2, 1, 0))
        elif attack == 'resetflood':
            for _ in range(50):
                self.do_reset()
        elif attack == 'evlie':
            self.ev_attack = True
        elif attack == 'breakstorm':
            self.break_storm = 12
            self.vqs[0].storm_done = False

    def hostile_rx(self, q):
        """The rx-ring part of an attack: uses buffers the guest posted
        (or none) with lies in the used ring. Returns True if it did."""
        attack, self.rx_attack = self.rx_attack, None
        if attack == 'biglen':
            for ln in (RX_BUF + 1, 1 << 20, 0xffffffff):
                if not q.has():
                    self.rx_attack = 'biglen'  # the rest later
                    break
                head, segs = q.pop()
                self.mem.write(segs[0][0], hdr(0, MSG_CU))
                q.push(head, ln)
        elif attack == 'dupid':
            head, segs = q.pop()
            self.mem.write(segs[0][0], hdr(0, MSG_CU))
            q.push(head, 32)
            q.push(head, 32)
            # The guest most likely posted that buffer again already (a
            # split ring reuses the freed head first): then the second
            # entry is a zeroed buffer, malformed. An id never posted
            # follows so the ring is reset either way.
            q.push(q.num + 9, 32)
        elif attack == 'jump':
            q.used_idx = (q.used_idx + 1000) & 0xffff
            q.push(q.num + 9, 32)
        return True

    def missed_kicks(self, kicked):
        """Called when select timed out: work the driver made available
        without a kick owes a kick; one still owed after KICK_GRACE seconds
        is a violation (the loop still processes the work meanwhile, so the
        test does not hang). The driver batches kicks and a slow (debug,
        emulated, 4-vCPU) guest may take well over 100 ms to reach one; a
        kick that never comes is the bug this catches."""
        tx, rx = self.vqs[1], self.vqs[0]
        stale_tx = (tx.ready() and tx.has() and 1 not in kicked
                    and not self.tx_stalled and self.lazy_tx is None)
        stale_rx = (self.rx_starved and rx.ready() and rx.has()
                    and 0 not in kicked)
        now = time.time()
        for q, stale, what in (
                ('tx', stale_tx, 'tx buffers made available without a kick'),
                ('rx', stale_rx,
                 'rx buffers added without a kick while the device waited')):
            if stale and self.owed.get(q) is None:
                self.owed[q] = now
            since = self.owed.get(q)
            if since is not None and now - since > KICK_GRACE:
                violation(f'{what} ({now - since:.1f} s)')

    def run(self):
        log('listening on', self.path)
        self.conn, _ = self.srv.accept()
        log('frontend connected')
        self.owed = {}
        while True:
            kicks = {q.kick: q.idx for q in self.vqs if q.kick is not None}
            r, _, _ = select.select([self.conn] + list(kicks), [], [], 0.05)
            kicked = set()
            for f in r:
                if f is self.conn:
                    self.handle_vu()
                    continue
                kicked.add(kicks[f])
                self.owed.pop({0: 'rx', 1: 'tx'}.get(kicks[f]), None)
                try:
                    os.read(f, 8)
                except BlockingIOError:
                    pass
            if not r:
                self.missed_kicks(kicked)
            now = time.time()
            for t in [t for t in self.timers if t[0] <= now]:
                self.timers.remove(t)
                t[1]()
            self.process_tx()
            self.fill_rx()
            self.rx_starved = bool(self.rxq) and self.vqs[0].ready() and not self.vqs[0].has()
            self.fill_ev()


Dev(sys.argv[1]).run()
