#!/usr/bin/env python3
"""Drives a redis-server with the requests relock and the raw baseline send, for counting the
server's instructions per acquire + release pair under callgrind (see count.sh).

    drive.py PORT MODE PAIRS DEPTH TAG

MODE:
  raw             SET NX PX, then EVALSHA of the compare-and-delete release, DEPTH deep
  raw1            the same, one request at a time
  batch           relock's batch.lua: each call carries DEPTH acquisitions of fresh keys and the
                  releases of the previous call's DEPTH keys (releases first, as relock sends them)
  batch-reuse     the same over 4*DEPTH keys used again and again: every acquisition meets the
                  tombstone of the key's previous release
  single          relock's acquire.lua then release.lua per pair, one request at a time
  single-reuse    the same over 64 keys used again and again (a tombstone each time)
  permit          as batch, with each acquisition one of 4 permits of its key (a shared hold with
                  the call's lease and retention: "<hold token>*4", as relock sends it)
  read-string     DEPTH readers of ONE key with the current scripts: each round is one pipeline
                  write of DEPTH release.lua calls (the previous round's readers) then DEPTH
                  acquire_shared.lua calls (new tokens; lease 30000, retention 600000, permits 0),
                  as individual EVALSHA; every reply is read and its status asserted
  read-string-batch  the same, the round's releases sent as one batch.lua call instead
  read-string-group  the same, each round ONE batch.lua call of the releases and the readers'
                  acquisitions ("<hold token>*0", the call's lease and retention), marked "+" (a
                  key more than once), as relock's group commit sends them
  read-hash       the read-string history with the hash-layout prototype scripts
                  benches/callgrind/proto/acquire_shared_hash.lua and release_shared_hash.lua
  read-hash-batch the same history, each round one call of the prototype group commit
                  benches/callgrind/proto/batch_shared_hash.lua (releases first)
In the read modes the key's released entries (8 kept; the hash prototype's ring keeps 32) fill after the first releases: the run is
measured with the list full. The key is new for each TAG (warm-up and run use distinct keys).

Scripts are read from relock/src/scripts (run from the repository root), or from the files named
by BATCH, ACQUIRE, RELEASE, ACQUIRE_SHARED (and ACQUIRE_HASH, RELEASE_HASH, BATCH_HASH) in the
environment. With TIMER=1 in the environment, the driver prints the wall-clock seconds of its
requests and the server's CPU seconds (INFO cpu) over them, for throughput ratios.
"""
import os
import socket
import sys
import time

port, mode, pairs, depth, tag = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                 int(sys.argv[4]), sys.argv[5])
scripts = os.environ.get('SCRIPTS', 'relock/src/scripts')
sock = socket.create_connection(('127.0.0.1', port))
reader = sock.makefile('rb')

RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
HOLDER = '4242 1764000000000 benchhost'


def encode(*args):
    out = [b'*%d\r\n' % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b'$%d\r\n%s\r\n' % (len(arg), arg))
    return b''.join(out)


def read():
    line = reader.readline()
    kind = line[:1]
    if kind == b'-':
        raise RuntimeError(line)
    if kind in b'+:':
        return line
    if kind == b'$':
        size = int(line[1:])
        return None if size < 0 else reader.read(size + 2)[:-2]
    if kind == b'*':
        return [read() for _ in range(max(int(line[1:]), 0))]
    raise RuntimeError(line)


def command(*args):
    sock.sendall(encode(*args))
    return read()


def load(name, default):
    path = os.environ.get(name) or os.path.join(scripts, default)
    with open(path) as f:
        return command('SCRIPT', 'LOAD', f.read()).decode()


def token(i):
    return '%032x' % (i * 7919 + 12345)


def lock(i):
    if mode == 'batch-reuse':
        i %= 4 * depth
    elif mode == 'single-reuse':
        i %= 64
    return 'relock:{%s:%d}' % (tag, i)


def number(reply):
    return int(reply[1:-2])


def cpu():
    info = command('INFO', 'cpu').decode()
    fields = dict(line.split(':', 1) for line in info.split('\r\n') if ':' in line)
    return float(fields['used_cpu_user']) + float(fields['used_cpu_sys'])


timer = os.environ.get('TIMER') == '1'
if timer:
    started, cpu_started = time.perf_counter(), cpu()

if mode in ('raw', 'raw1'):
    sha = command('SCRIPT', 'LOAD', RELEASE).decode()
    step = depth if mode == 'raw' else 1
    for start in range(0, pairs, step):
        batch = range(start, min(start + step, pairs))
        sock.sendall(b''.join(encode('SET', lock(i), token(i), 'NX', 'PX', 30000) for i in batch))
        for _ in batch:
            read()
        sock.sendall(b''.join(encode('EVALSHA', sha, 1, lock(i), token(i)) for i in batch))
        for _ in batch:
            read()
elif mode in ('single', 'single-reuse'):
    acquire, release = load('ACQUIRE', 'acquire.lua'), load('RELEASE', 'release.lua')
    for i in range(pairs):
        status, fence = command('EVALSHA', acquire, 1, lock(i), token(i), 30000, 600000, HOLDER)
        assert status == b':1\r\n', (status, fence)
        released = command('EVALSHA', release, 2, lock(i), lock(i) + ':released', token(i),
                           number(fence), 600000)
        assert released == b':1\r\n', released
elif mode in ('batch', 'batch-reuse', 'permit'):
    sha = load('BATCH', 'batch.lua')
    shared = '*4' if mode == 'permit' else ''
    held, fences, i = [], {}, 0
    while i < pairs or held:
        taking = list(range(i, min(i + depth, pairs)))
        i += len(taking)
        keys = [lock(k) for k in held] + [lock(k) for k in taking]
        args = ['-%d %s' % (fences[k], token(k)) for k in held] + [token(k) + shared for k in taking]
        reply = command('EVALSHA', sha, len(keys), *keys, HOLDER, 30000, 600000, len(held), *args)
        assert all(status == b':1\r\n' for status in reply[::2]), reply[:8]
        for at, k in enumerate(taking):
            fences[k] = number(reply[2 * (len(held) + at) + 1])
        held = taking
elif mode in ('read-string', 'read-string-batch', 'read-string-group', 'read-hash',
              'read-hash-batch'):
    proto = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'proto')
    if mode == 'read-hash-batch':
        batch = load('BATCH_HASH', os.path.join(proto, 'batch_shared_hash.lua'))
    elif mode == 'read-hash':
        acquire = load('ACQUIRE_HASH', os.path.join(proto, 'acquire_shared_hash.lua'))
        release = load('RELEASE_HASH', os.path.join(proto, 'release_shared_hash.lua'))
    else:
        acquire = load('ACQUIRE_SHARED', 'acquire_shared.lua')
        release = load('RELEASE', 'release.lua')
    if mode in ('read-string-batch', 'read-string-group'):
        batch = load('BATCH', 'batch.lua')
    key = 'relock:{%s:read}' % tag
    held, i = [], 0  # (token, fence) of the live readers
    while i < pairs or held:
        taking = [token(k) for k in range(i, min(i + depth, pairs))]
        i += len(taking)
        if mode == 'read-string-group':
            reply = command('EVALSHA', batch, len(held) + len(taking), *[key] * (len(held) + len(taking)),
                            HOLDER, 30000, 600000, '%d+' % len(held),
                            *['-%d %s' % (f, t) for t, f in held],
                            *[t + '*0' for t in taking])
            assert all(status == b':1\r\n' for status in reply[::2]), reply[:8]
            held = [(t, number(fence)) for t, fence in zip(taking, reply[2 * len(held) + 1::2])]
            continue
        if mode == 'read-hash-batch':
            reply = command('EVALSHA', batch, 2, key, key + ':released', 30000, 600000, 0,
                            len(held), *['%d %s' % (f, t) for t, f in held], *taking)
            assert all(status == b':1\r\n' for status in reply[::2]), reply[:8]
            held = [(t, number(fence)) for t, fence in zip(taking, reply[2 * len(held) + 1::2])]
            continue
        if mode == 'read-string-batch':
            out = [encode('EVALSHA', batch, len(held), *[key] * len(held), HOLDER, 30000, 600000,
                          len(held), *['-%d %s' % (f, t) for t, f in held])] if held else []
        else:
            out = [encode('EVALSHA', release, 2, key, key + ':released', t, f, 600000)
                   for t, f in held]
        out += [encode('EVALSHA', acquire, 1, key, t, 30000, 600000, 0) for t in taking]
        sock.sendall(b''.join(out))
        if mode == 'read-string-batch':
            if held:
                reply = read()
                assert all(status == b':1\r\n' for status in reply[::2]), reply[:8]
        else:
            for _ in held:
                released = read()
                assert released == b':1\r\n', released
        held = []
        for t in taking:
            status, fence = read()
            assert status == b':1\r\n', (status, fence)
            held.append((t, number(fence)))
else:
    sys.exit(f'unknown mode {mode}: raw, raw1, batch, batch-reuse, permit, single or single-reuse')
    sys.exit(f'unknown mode {mode}: raw, raw1, batch, batch-reuse, single, single-reuse, '
             'read-string, read-string-batch, read-string-group, read-hash or read-hash-batch')

if timer:
    print('%s %d pairs depth %d: %.3f s wall, %.3f s server cpu'
          % (mode, pairs, depth, time.perf_counter() - started, cpu() - cpu_started))
