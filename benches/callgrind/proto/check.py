#!/usr/bin/env python3
"""Checks the hash-layout prototype scripts in this folder against the shared semantics of
relock/src/scripts (acquire_shared.lua, release.lua), on a scratch redis-server.

    python3 benches/callgrind/proto/check.py PORT

PORT: a redis-server (7.0 or later) that may be written to; the checks use keys under
`protocheck:` and delete them first. Every scenario runs twice: with acquire_shared_hash.lua and
release_shared_hash.lua, and with batch_shared_hash.lua carrying one request per call. Prints
`ok` or stops at the first failed assertion. Needs python3 only (no client library).
"""
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sock = socket.create_connection(('127.0.0.1', int(sys.argv[1])))
reader = sock.makefile('rb')


def encode(*args):
    out = [b'*%d\r\n' % len(args)]
    for arg in args:
        arg = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b'$%d\r\n%s\r\n' % (len(arg), arg))
    return b''.join(out)


def read():
    line = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b'-':
        return RuntimeError(rest.decode())
    if kind == b'+':
        return rest.decode()
    if kind == b':':
        return int(rest)
    if kind == b'$':
        return None if int(rest) < 0 else reader.read(int(rest) + 2)[:-2].decode()
    if kind == b'*':
        return [read() for _ in range(max(int(rest), 0))]
    raise RuntimeError(line)


def command(*args):
    sock.sendall(encode(*args))
    return read()


def load(name):
    with open(os.path.join(HERE, name)) as f:
        return command('SCRIPT', 'LOAD', f.read())


ACQUIRE, RELEASE, BATCH = (load('acquire_shared_hash.lua'), load('release_shared_hash.lua'),
                           load('batch_shared_hash.lua'))


def token(name):
    return ('%032x' % hash(name))[-32:].replace('-', '0')


class Single:
    """The single scripts, one request per call."""

    @staticmethod
    def acquire(key, tok, lease=30000, permits=0):
        return command('EVALSHA', ACQUIRE, 1, key, tok, lease, 600000, permits)

    @staticmethod
    def release(key, tok, fence):
        return command('EVALSHA', RELEASE, 2, key, key + ':released', tok, fence, 600000)


class Batch:
    """batch_shared_hash.lua carrying one request per call."""

    @staticmethod
    def acquire(key, tok, lease=30000, permits=0):
        return command('EVALSHA', BATCH, 2, key, key + ':released', lease, 600000, permits, 0, tok)

    @staticmethod
    def release(key, tok, fence):
        return command('EVALSHA', BATCH, 2, key, key + ':released', 30000, 600000, 0, 1,
                       '%s %s' % (fence, tok))[0]


def header(key):
    return command('HGET', key, '*').split()


def scenarios(s, tag):
    k = 'protocheck:{%s:readers}' % tag
    command('DEL', k)
    r1, r2, r3 = token(tag + 'r1'), token(tag + 'r2'), token(tag + 'r3')
    status, fence = s.acquire(k, r1)
    assert status == 1 and fence > 10 ** 15, (status, fence)      # the clock's µs
    assert s.acquire(k, r1) == [1, fence]                          # a retry: the same grant
    assert s.acquire(k, r2) == [1, fence]                          # readers share the last token
    assert s.acquire(k, r3, permits=2) == [3, 0]                   # readers live: permits mismatch
    assert 0 < command('PTTL', k) <= 600000
    assert s.release(k, r1, fence) == 1
    assert s.release(k, r1, fence) == 2                            # a retried release
    assert s.acquire(k, r1) == [2, 0]                              # released already
    assert s.release(k, r3, 5) == 0                                # unknown hold, known token
    assert command('HEXISTS', k, r3) == 0                          # nothing written
    assert s.release(k, r3, 0) == 0                                # unknown outcome: named
    assert s.acquire(k, r3) == [2, 0]                              # its late acquisition refused
    assert header(k)[4] == '1'                                     # one live holder (r2)

    # A writer's claim (as acquire.lua would record it) refuses readers and sets `waited`.
    h = header(k)
    h[2] = str(int(time.time() * 1000) + 5000)
    command('HSET', k, '*', ' '.join(h))
    status, ttl = s.acquire(k, token(tag + 'r4'))
    assert status == 0 and 4000 < ttl <= 5000, (status, ttl)
    assert header(k)[3] == '1'
    h = header(k)
    h[2] = '0'
    command('HSET', k, '*', ' '.join(h))
    # `waited` set: a release is published.
    listener = socket.create_connection(sock.getpeername())
    listener.sendall(encode('SUBSCRIBE', k + ':released'))
    listener.settimeout(2)
    assert b'subscribe' in listener.recv(1000)
    r5 = token(tag + 'r5')
    assert s.acquire(k, r5) == [1, fence]
    assert s.release(k, r5, fence) == 1
    assert b'message' in listener.recv(1000)
    listener.close()

    # The ring keeps the 32 most recent released entries: 40 more releases drop the oldest.
    tokens = [token(tag + 'ring%d' % i) for i in range(40)]
    for t in tokens:
        assert s.acquire(k, t)[0] == 1
    for t in tokens:
        assert s.release(k, t, fence) == 1
    # 43 released in all (r1, r3, r5, ring0..39): the 32 kept are ring8..39.
    assert s.acquire(k, tokens[8]) == [2, 0]
    assert s.acquire(k, tokens[7]) == [1, fence]                   # dropped: granted
    assert s.release(k, tokens[7], fence) == 1
    assert command('HLEN', k) == 2 + 1 + 32 + 32, command('HLEN', k)  # *, ~, r2, ring, entries

    # Permits: a fresh token each, max(last + 1, clock); the limit counts live holders only.
    p = 'protocheck:{%s:permits}' % tag
    command('DEL', p)
    a, b, c = token(tag + 'pa'), token(tag + 'pb'), token(tag + 'pc')
    fa = s.acquire(p, a, lease=200, permits=2)
    fb = s.acquire(p, b, permits=2)
    assert fa[0] == fb[0] == 1 and fb[1] > fa[1], (fa, fb)
    status, ttl = s.acquire(p, c, permits=2)
    assert status == 0 and 0 < ttl <= 200, (status, ttl)           # the soonest deadline
    time.sleep(0.25)                                               # a's lease ends unseen
    fc = s.acquire(p, c, permits=2)
    assert fc[0] == 1 and fc[1] > fb[1], fc                        # reclaimed, then granted
    assert command('HEXISTS', p, a) == 0
    assert s.release(p, a, fa[1]) == 0                             # reclaimed: no longer held
    assert s.release(p, b, fb[1]) == 1

    # A tombstone (a string) becomes the hash, the hold it names kept as a released entry.
    t = 'protocheck:{%s:tombstone}' % tag
    dead = token(tag + 'dead')
    command('SET', t, '-1234 ' + dead, 'PX', 60000)
    if s is Single:
        assert s.acquire(t, token(tag + 'new')) == [1, 1234]
        assert s.acquire(t, dead) == [2, 0]
        assert command('TYPE', t) == 'hash'
        held = 'protocheck:{%s:held}' % tag
        command('SET', held, token(tag + 'x') + ' 5 %d 1 2 host' % (time.time() * 1000 + 9000))
        status, ttl = s.acquire(held, token(tag + 'y'))
        assert status == 0 and ttl > 8000, (status, ttl)
        assert command('GET', held)[32] == '+'                     # marked: its release publishes
    else:
        assert isinstance(s.acquire(t, token(tag + 'new')), RuntimeError)  # the singles' job


scenarios(Single, 'single')
scenarios(Batch, 'batch')
print('ok')
