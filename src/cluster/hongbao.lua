#!lua name=hongbao
--[[
hongbao's engine: the Redis Functions library every primary of the cluster
runs (src/cluster/, docs/ARCHITECTURE.md "Engine (cluster mode)").

Rules each function keeps:
- It touches only the keys it is given, all under one hash tag, so that it
  runs on one primary, atomically (Redis runs a function to its end before
  any other command).
- It is idempotent: the client retries after MOVED, ASK, TRYAGAIN or a
  failover, so a second call with the same arguments must leave the same
  state and give the same answer (hb_budget_set excepted: a set is a reset).
- It checks everything before its first write: a function that fails half
  way keeps the writes it made (Redis has no rollback).
- Money is integer cents; every number is below 2^53, where Lua's doubles
  are exact.

LIBRARY_VERSION must equal cluster::LIBRARY_VERSION in Rust (a unit test
checks); raise both on any change here. A node loads this library at start
where it is absent or older and refuses to start where it is newer.
]]

local LIBRARY_VERSION = 1

-- Packet keys live a day past the packet's expiry, for the audit.
local KEEP_MS = 86400000
-- A mailbox lives a day past its latest note's expiry.
local KEEP_S = 86400
-- A node that has not leased for this long is not counted live.
local LIVE_MS = 3000
-- A node silent for this long is forgotten by the budget.
local FORGET_MS = 60000
-- unpack() of more values than this would overflow Lua's C stack.
local CHUNK = 1000

local function fail(msg)
  return redis.error_reply('ERR hongbao: ' .. msg)
end

-- A whole number >= lo, or nil.
local function whole(s, lo)
  local n = tonumber(s)
  if n == nil or n ~= math.floor(n) or n < lo then
    return nil
  end
  return n
end

-- cmd(key, values[from..to]) in chunks.
local function call_chunked(cmd, key, values, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + CHUNK - 1, to)
    redis.call(cmd, key, unpack(values, i, j))
    i = j + 1
  end
end

-- hb_version() -> the library's version. No keys, no writes.
local function hb_version(keys, args)
  return LIBRARY_VERSION
end

-- hb_create(pkt, t, c, s; id, amount, expires_ms, creator, n,
--           user_1..user_n, share_1..share_n)
-- -> "created" | "exists" (a packet with this id and amount is there: a
-- retry) | error "conflict" (it is there with another amount).
local function hb_create(keys, args)
  local pkt, t, s = keys[1], keys[2], keys[4]
  local amount = whole(args[2], 1)
  local expires_ms = whole(args[3], 0)
  local creator = whole(args[4], 0)
  local n = whole(args[5], 1)
  if not (amount and expires_ms and creator and n) or #args ~= 5 + 2 * n then
    return fail('hb_create: bad arguments')
  end
  local existing = redis.call('HGET', pkt, 'amount')
  if existing then
    if tonumber(existing) == amount then
      return 'exists'
    end
    return fail('conflict: packet ' .. args[1] .. ' exists with amount ' .. existing)
  end
  local seen, sum = {}, 0
  for i = 1, n do
    local user = args[5 + i]
    if seen[user] then
      return fail('hb_create: target ' .. user .. ' given twice')
    end
    seen[user] = true
    local share = whole(args[5 + n + i], 1)
    if not share then
      return fail('hb_create: a share below 1 cent')
    end
    sum = sum + share
  end
  if sum ~= amount then
    return fail('hb_create: shares sum to ' .. sum .. ', not the amount ' .. amount)
  end
  redis.call('HSET', pkt, 'amount', amount, 'remaining', amount, 'claimants', n,
    'left', n, 'expires_ms', expires_ms, 'creator', creator, 'repeats', 0)
  call_chunked('SADD', t, args, 6, 5 + n)
  call_chunked('RPUSH', s, args, 6 + n, 5 + 2 * n)
  local keep = expires_ms + KEEP_MS
  redis.call('PEXPIREAT', pkt, keep)
  redis.call('PEXPIREAT', t, keep)
  redis.call('PEXPIREAT', s, keep)
  return 'created'
end

-- hb_claim(pkt, t, c, s; user, now_ms) -> {status, cents}
-- status: "unknown" (no such packet), "expired" (now_ms >= expires_ms, or
-- refunded already: a node whose clock is behind cannot pay after the
-- refund), "repeat" (paid before: the same cents again), "stranger" (not a
-- target), "paid" (the next precomputed share, recorded).
local function hb_claim(keys, args)
  local pkt, t, c, s = keys[1], keys[2], keys[3], keys[4]
  local user = args[1]
  local now_ms = whole(args[2], 0)
  if not now_ms then
    return fail('hb_claim: bad arguments')
  end
  local h = redis.call('HMGET', pkt, 'expires_ms', 'refunded')
  if not h[1] then
    return { 'unknown', 0 }
  end
  local expires_ms = tonumber(h[1])
  if now_ms >= expires_ms or h[2] then
    return { 'expired', 0 }
  end
  local prev = redis.call('HGET', c, user)
  if prev then
    -- A write, so that the caller's WAIT covers the claim it read here.
    redis.call('HINCRBY', pkt, 'repeats', 1)
    return { 'repeat', tonumber(prev) }
  end
  if redis.call('SISMEMBER', t, user) == 0 then
    return { 'stranger', 0 }
  end
  local share = redis.call('LPOP', s)
  if not share then
    return fail('hb_claim: packet ' .. pkt .. ' has no share left for target ' .. user)
  end
  redis.call('HSET', c, user, share)
  redis.call('HINCRBY', pkt, 'remaining', -tonumber(share))
  redis.call('HINCRBY', pkt, 'left', -1)
  redis.call('PEXPIREAT', c, expires_ms + KEEP_MS)
  return { 'paid', tonumber(share) }
end

-- hb_expire(pkt, c; now_ms) -> the cents refunded by this call (0 when all
-- was claimed), or -1: unknown, not yet expired, or refunded before.
local function hb_expire(keys, args)
  local pkt, c = keys[1], keys[2]
  local now_ms = whole(args[1], 0)
  if not now_ms then
    return fail('hb_expire: bad arguments')
  end
  local h = redis.call('HMGET', pkt, 'expires_ms', 'refunded', 'remaining', 'amount')
  if not h[1] or h[2] or now_ms < tonumber(h[1]) then
    return -1
  end
  local remaining, amount = tonumber(h[3]), tonumber(h[4])
  local paid = 0
  for _, cents in ipairs(redis.call('HVALS', c)) do
    paid = paid + tonumber(cents)
  end
  if paid + remaining ~= amount then
    return fail('hb_expire: packet ' .. pkt .. ' does not balance: paid ' .. paid
      .. ' + remaining ' .. remaining .. ' ~= amount ' .. amount)
  end
  redis.call('HSET', pkt, 'refunded', remaining, 'remaining', 0)
  return remaining
end

-- hb_packet(pkt, t, c, s) -> nil, or {amount, remaining, refunded (-1 when
-- not refunded), claimants, expires_ms, creator, repeats,
-- {user, cents, ...}, {target, ...}}. No writes.
local function hb_packet(keys, args)
  local pkt, t, c = keys[1], keys[2], keys[3]
  local h = redis.call('HMGET', pkt, 'amount', 'remaining', 'refunded', 'claimants',
    'expires_ms', 'creator', 'repeats')
  if not h[1] then
    return false
  end
  return { tonumber(h[1]), tonumber(h[2]), tonumber(h[3] or -1), tonumber(h[4]),
    tonumber(h[5]), tonumber(h[6]), tonumber(h[7] or 0),
    redis.call('HGETALL', c), redis.call('SMEMBERS', t) }
end

-- hb_login(u, m; user, node, now_s, now_ms) -> the user's undelivered
-- notes, oldest expiry first (kept until hb_delivered; the expired ones
-- pruned). Marks the user online at `node`.
local function hb_login(keys, args)
  local u, m = keys[1], keys[2]
  local node, now_s, now_ms = whole(args[2], 0), whole(args[3], 0), whole(args[4], 0)
  if not (node and now_s and now_ms) then
    return fail('hb_login: bad arguments')
  end
  redis.call('HSET', u, 'node', args[2], 'since_ms', args[4])
  redis.call('ZREMRANGEBYSCORE', m, '-inf', '(' .. now_s)
  return redis.call('ZRANGE', m, 0, -1)
end

-- hb_logout(u; node) -> 1 when the user was online at `node` and no longer
-- is, 0 otherwise (online elsewhere since, or not at all).
local function hb_logout(keys, args)
  local u = keys[1]
  if redis.call('HGET', u, 'node') == args[1] then
    redis.call('DEL', u)
    return 1
  end
  return 0
end

-- hb_route(u, m; note, expires_s, mailbox_max) -> {node the user is online
-- at or -1, notes dropped}. The note always goes into the mailbox, so that
-- a push survives the death of the node it is sent to; past mailbox_max the
-- earliest-expiring notes are dropped (and counted).
local function hb_route(keys, args)
  local u, m = keys[1], keys[2]
  local note = args[1]
  local expires_s, max = whole(args[2], 0), whole(args[3], 1)
  if not (expires_s and max) then
    return fail('hb_route: bad arguments')
  end
  redis.call('ZADD', m, expires_s, note)
  local dropped = redis.call('ZCARD', m) - max
  if dropped > 0 then
    redis.call('ZPOPMIN', m, dropped)
  else
    dropped = 0
  end
  local last = redis.call('ZRANGE', m, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('EXPIREAT', m, tonumber(last[2]) + KEEP_S)
  end
  local node = redis.call('HGET', u, 'node')
  return { tonumber(node or -1), dropped }
end

-- hb_delivered(m; packet) -> how many notes of that packet left the
-- mailbox (0 or 1). By packet, not by the whole note: the core that wrote
-- the push knows its frame, not its expiry. A mailbox holds at most
-- mailbox_max notes, so the scan is short.
local function hb_delivered(keys, args)
  local m = keys[1]
  local prefix = args[1] .. ':'
  local removed = 0
  for _, note in ipairs(redis.call('ZRANGE', m, 0, -1)) do
    if string.sub(note, 1, #prefix) == prefix then
      removed = removed + redis.call('ZREM', m, note)
    end
  end
  return removed
end

-- hb_budget_set(b, totals; qps, total) -> the new epoch. Leases start
-- again from 0: a set is a reset (a retried set resets again). Each epoch's
-- total is kept (totals: epoch -> total) for the fleet's audit.
local function hb_budget_set(keys, args)
  local b, totals = keys[1], keys[2]
  local qps, total = whole(args[1], 0), whole(args[2], 0)
  if not (qps and total) then
    return fail('hb_budget_set: bad arguments')
  end
  local epoch = redis.call('HINCRBY', b, 'epoch', 1)
  redis.call('HSET', b, 'qps', args[1], 'total', args[2], 'leased', 0)
  redis.call('HSET', totals, epoch, args[2])
  return epoch
end

-- hb_lease(b, nodes, req; node, seq, want, now_ms) -> {epoch, granted, qps,
-- total, leased, live_nodes}. granted = min(want, total - leased), so the
-- leases of an epoch never exceed its total. The grant is remembered per
-- node as "seq:epoch:granted": a retry of the same (node, seq) returns the
-- same grant without leasing again; an older seq (a late retry) gets 0.
-- Heartbeats the node: live_nodes counts the nodes that leased in the last
-- LIVE_MS.
local function hb_lease(keys, args)
  local b, nodes, req = keys[1], keys[2], keys[3]
  local node = args[1]
  local seq, want, now_ms = whole(args[2], 0), whole(args[3], 0), whole(args[4], 0)
  if not (whole(node, 0) and seq and want and now_ms) then
    return fail('hb_lease: bad arguments')
  end
  local h = redis.call('HMGET', b, 'epoch', 'qps', 'total', 'leased')
  local epoch, qps = tonumber(h[1] or 0), tonumber(h[2] or 0)
  local total, leased = tonumber(h[3] or 0), tonumber(h[4] or 0)

  redis.call('HSET', nodes, node, args[4])
  local live = 0
  local seen = redis.call('HGETALL', nodes)
  for i = 1, #seen, 2 do
    local at = tonumber(seen[i + 1])
    if at >= now_ms - LIVE_MS then
      live = live + 1
    elseif at < now_ms - FORGET_MS then
      redis.call('HDEL', nodes, seen[i])
    end
  end

  local prev = redis.call('HGET', req, node)
  if prev then
    local p_seq, p_epoch, p_granted = string.match(prev, '^(%d+):(%d+):(%d+)$')
    if p_seq == args[2] then
      return { tonumber(p_epoch), tonumber(p_granted), qps, total, leased, live }
    end
    if p_seq and tonumber(p_seq) > seq then
      return { epoch, 0, qps, total, leased, live }
    end
  end
  local granted = math.min(want, math.max(0, total - leased))
  if granted > 0 then
    leased = redis.call('HINCRBY', b, 'leased', granted)
  end
  redis.call('HSET', req, node, args[2] .. ':' .. string.format('%d', epoch) .. ':'
    .. string.format('%d', granted))
  return { epoch, granted, qps, total, leased, live }
end

redis.register_function { function_name = 'hb_version', callback = hb_version, flags = { 'no-writes' } }
redis.register_function('hb_create', hb_create)
redis.register_function('hb_claim', hb_claim)
redis.register_function('hb_expire', hb_expire)
redis.register_function { function_name = 'hb_packet', callback = hb_packet, flags = { 'no-writes' } }
redis.register_function('hb_login', hb_login)
redis.register_function('hb_logout', hb_logout)
redis.register_function('hb_route', hb_route)
redis.register_function('hb_delivered', hb_delivered)
redis.register_function('hb_budget_set', hb_budget_set)
redis.register_function('hb_lease', hb_lease)
