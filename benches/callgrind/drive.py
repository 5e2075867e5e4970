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
  permit          as batch, with each acquisition one of 4 permits of its key (a shared hold:
                  "<hold token> <lease> <retention> shared 4")

Scripts are read from relock/src/scripts (run from the repository root), or from the files named
by BATCH, ACQUIRE and RELEASE in the environment.
"""
import os
import socket
import sys

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
    shared = ' 30000 600000 shared 4' if mode == 'permit' else ''
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
else:
    sys.exit(f'unknown mode {mode}: raw, raw1, batch, batch-reuse, permit, single or single-reuse')
