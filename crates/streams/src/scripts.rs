//! The Lua scripts. Each runs atomically on the node that owns its keys,
//! and every key a script touches carries the same partition hash tag.
//!
//! Scripts start with `#!lua`. Those that add data (appends, redrives) let
//! Redis refuse them as a whole when the node is out of memory, instead of
//! failing halfway; those that keep the system running or free memory
//! (retention, acknowledgements, dead letters, claims, leases, membership)
//! carry `flags=allow-oom`, so that a full node can still drain.
//!
//! # Fencing
//! A partition's lease holds `<token>:<owner>`, the token issued by Redis
//! when the lease was taken ([`LEASE_ACQUIRE`]). Every script that changes
//! what a group holds (acknowledging, dead-lettering, claiming for a retry
//! or a sweep) first compares the lease with the caller's value and changes
//! nothing when they differ, so a consumer that lost its lease cannot undo
//! or take over the new owner's work, however late it wakes up.

use std::sync::LazyLock;

use redis::Script;

/// Helpers shared by the stream scripts, prepended to their bodies.
const PRELUDE: &str = r#"
local function id_parts(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end

local function id_cmp(a, b)
  local ams, aseq = id_parts(a)
  local bms, bseq = id_parts(b)
  if ams ~= bms then return ams < bms and -1 or 1 end
  if aseq ~= bseq then return aseq < bseq and -1 or 1 end
  return 0
end

local function id_next(id)
  local ms, seq = id_parts(id)
  return string.format('%.0f-%.0f', ms, seq + 1)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function groups_of(stream)
  local out = {}
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local t = {}
    for i = 1, #g, 2 do t[g[i]] = g[i + 1] end
    out[#out + 1] = t
  end
  return out
end

-- Entries the slowest group has not acknowledged: not yet delivered (lag)
-- plus delivered and pending. When Redis cannot tell the lag (an XDEL in
-- the unread range), count the whole stream: refusing too early is safe,
-- accepting too much is not. Entries something else removed unread stay
-- in Redis 7.0's lag for good; `lost_key` holds how many per group (kept by
-- the MAINTAIN script) and they are left out.
local function backlog(stream, lost_key)
  local len = redis.call('XLEN', stream)
  if len == 0 then return 0 end
  local groups = groups_of(stream)
  if #groups == 0 then return len end
  local worst = 0
  for _, g in ipairs(groups) do
    local lag = g['lag']
    local b = len
    if type(lag) == 'number' then
      local lost = tonumber(redis.call('HGET', lost_key, g['name']) or '0')
      b = math.max(lag - lost, 0) + g['pending']
    end
    if b > worst then worst = b end
  end
  if worst > len then worst = len end
  return worst
end

-- The fencing check of every script that changes what a group holds: the
-- partition's lease must still carry the caller's token and name.
local function holds_lease(lease_key, lease_value)
  return redis.call('GET', lease_key) == lease_value
end

local function last_delivered(stream, group)
  for _, g in ipairs(groups_of(stream)) do
    if g['name'] == group then return g['last-delivered-id'] end
  end
  return nil
end

-- Whether every group has acknowledged entry `id`.
local function acked_by_all(stream, id)
  for _, g in ipairs(groups_of(stream)) do
    if id_cmp(id, g['last-delivered-id']) > 0 then return false end
    if #redis.call('XPENDING', stream, g['name'], id, id, 1) > 0 then return false end
  end
  return true
end
"#;

fn stream_script(body: &str) -> Script {
    Script::new(&format!("#!lua\n{PRELUDE}\n{body}"))
}

fn allow_oom_stream_script(body: &str) -> Script {
    Script::new(&format!("#!lua flags=allow-oom\n{PRELUDE}\n{body}"))
}

/// Append a batch if the partition has room, in one atomic step.
///
/// KEYS[1] stream, KEYS[2] lost-count hash. ARGV[1] capacity, ARGV[2]
/// arguments per entry, then the
/// entries' field/value arguments. Appends the longest prefix that fits and
/// returns `{backlog_before, id...}`.
pub static PRODUCE: LazyLock<Script> = LazyLock::new(|| {
    stream_script(
        r#"
local stream = KEYS[1]
local capacity = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local count = (#ARGV - 2) / width
local used = backlog(stream, KEYS[2])
local room = capacity - used
if room < count then count = math.max(room, 0) end
local reply = {used}
local pos = 3
if width == 4 then
  -- The envelope's shape: skip building an argument table per entry.
  for i = 1, count do
    reply[i + 1] = redis.call('XADD', stream, '*', ARGV[pos], ARGV[pos + 1], ARGV[pos + 2], ARGV[pos + 3])
    pos = pos + 4
  end
else
  for i = 1, count do
    reply[i + 1] = redis.call('XADD', stream, '*', unpack(ARGV, pos, pos + width - 1))
    pos = pos + width
  end
end
return reply
"#,
    )
});

/// [`PRODUCE`] for producers that may send a message again (an outbox relay
/// after a crash): an entry whose message was appended before, within the
/// marker's TTL, is not appended again, and its earlier id is returned
/// prefixed with `=`.
///
/// KEYS[1] stream, KEYS[2] lost-count hash, KEYS[3..] one marker per entry.
/// ARGV[1] capacity, ARGV[2] arguments per entry, ARGV[3] marker TTL in ms,
/// then the entries' field/value arguments.
pub static PRODUCE_ONCE: LazyLock<Script> = LazyLock::new(|| {
    stream_script(
        r#"
local stream = KEYS[1]
local capacity = tonumber(ARGV[1])
local width = tonumber(ARGV[2])
local ttl = ARGV[3]
local count = (#ARGV - 3) / width
local used = backlog(stream, KEYS[2])
local room = capacity - used
local reply = {used}
local pos = 4
for i = 1, count do
  local marker = KEYS[i + 2]
  local earlier = redis.call('GET', marker)
  if earlier then
    reply[i + 1] = '=' .. earlier
  else
    if room <= 0 then break end
    local id = redis.call('XADD', stream, '*', unpack(ARGV, pos, pos + width - 1))
    redis.call('SET', marker, id, 'PX', ttl)
    reply[i + 1] = id
    room = room - 1
  end
  pos = pos + width
end
return reply
"#,
    )
});

/// Move one entry to the DLQ: append it with why it failed, acknowledge it,
/// and delete it from the stream once no other group needs it.
///
/// KEYS[1] stream, KEYS[2] dlq, KEYS[3] lease. ARGV: group, entry id,
/// reason, error, attempts, consumer, `1` when XACKDEL may be used, lease
/// value, `1` to move it even when it is pending with no one (its group
/// lost the pending record). Returns 1 when moved, 0 when the entry is no
/// longer pending with this consumer (an earlier call moved it, so the
/// script is safe to repeat; or another consumer took it over), -1 when it
/// was pending but deleted from the stream (lost; the pending entry is
/// cleared), -2 when the caller's lease is gone (fenced: nothing changed).
///
/// It may run on a full node (`allow-oom`): the append is one entry, and
/// the acknowledgement is what lets retention free the node. Without it a
/// message to dead-letter would hold the trim point, and the node, for good.
///
/// The delete waits until the entry is older than every group's last
/// delivered id, with `XACKDEL` as without: deleting the newest delivered
/// entry would leave Redis unable to report the group's lag until its next
/// read, and backpressure would have to guess. Retention removes such
/// entries later.
pub static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    allow_oom_stream_script(
        r#"
local stream, dlq = KEYS[1], KEYS[2]
local group, id = ARGV[1], ARGV[2]
if not holds_lease(KEYS[3], ARGV[8]) then return -2 end
local pending = redis.call('XPENDING', stream, group, id, id, 1)[1]
if pending and pending[2] ~= ARGV[6] then return 0 end
if not pending and ARGV[9] ~= '1' then return 0 end
local found = redis.call('XRANGE', stream, id, id)[1]
if not found then
  if pending then redis.call('XACK', stream, group, id) end
  return -1
end
local args = {dlq, '*'}
for _, v in ipairs(found[2]) do args[#args + 1] = v end
local meta = {'dlq.reason', ARGV[3], 'dlq.error', ARGV[4], 'dlq.attempts', ARGV[5],
  'dlq.origin', id, 'dlq.group', group, 'dlq.consumer', ARGV[6], 'dlq.at', tostring(now_ms())}
for _, v in ipairs(meta) do args[#args + 1] = v end
redis.call('XADD', unpack(args))
local read_past = true
for _, g in ipairs(groups_of(stream)) do
  if id_cmp(id, g['last-delivered-id']) >= 0 then read_past = false end
end
if ARGV[7] == '1' and read_past then
  redis.call('XACKDEL', stream, group, 'ACKED', 'IDS', 1, id)
else
  redis.call('XACK', stream, group, id)
  if read_past and acked_by_all(stream, id) then redis.call('XDEL', stream, id) end
end
return 1
"#,
    )
});

/// Claim pending entries for the partition's owner, with their data.
///
/// Used at takeover (every pending entry, whoever holds it) and whenever
/// the owner finds entries it did not read itself: read by a consumer that
/// lost its lease, or by anyone else, or delivered to it by a read whose
/// reply was lost. Each claim from another consumer counts as a delivery
/// (`RETRYCOUNT` one more than before), so a message that keeps killing its
/// consumers still reaches `max_attempts`. Pending ids whose entries were
/// deleted are acknowledged and counted as lost.
///
/// KEYS[1] stream, KEYS[2] lease. ARGV[1] group, ARGV[2] consumer,
/// ARGV[3] lease value, ARGV[4] first id (`-` or `(id` allowed), ARGV[5]
/// last id, ARGV[6] most rows, ARGV[7] which: `others` (not the caller's
/// own entries), `adopt` (the caller's too, their count unchanged) or `all`
/// (every entry counted as delivered again: a takeover). Returns `{-2}` when fenced, else `{1, last delivered id of
/// the group, next first id or '', lost, {id, fields, 0, deliveries}...}`
/// (the entries in the shape of `XREADGROUP ... CLAIM`).
pub static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    allow_oom_stream_script(
        r#"
local stream, group, me = KEYS[1], ARGV[1], ARGV[2]
if not holds_lease(KEYS[2], ARGV[3]) then return {-2} end
local mode = ARGV[7]
local rows = redis.call('XPENDING', stream, group, ARGV[4], ARGV[5], tonumber(ARGV[6]))
local out = {1, last_delivered(stream, group) or '0-0', '', 0}
local lost = 0
for _, row in ipairs(rows) do
  local own = row[2] == me
  if mode ~= 'others' or not own then
    local found = redis.call('XRANGE', stream, row[1], row[1])[1]
    if found then
      local deliveries = row[4]
      if mode == 'all' or not own then deliveries = deliveries + 1 end
      redis.call('XCLAIM', stream, group, me, 0, row[1], 'RETRYCOUNT', deliveries, 'JUSTID')
      out[#out + 1] = {found[1], found[2], 0, deliveries}
    else
      redis.call('XACK', stream, group, row[1])
      lost = lost + 1
    end
  end
end
if #rows == tonumber(ARGV[6]) then out[3] = '(' .. rows[#rows][1] end
out[4] = lost
return out
"#,
    )
});

/// Count the next delivery of a failed message and take it for the retry.
///
/// KEYS[1] stream, KEYS[2] lease. ARGV[1] group, ARGV[2] consumer,
/// ARGV[3] lease value, ARGV[4] entry id, ARGV[5] its delivery count from
/// now on. Returns 1 when claimed, -2 when fenced, -1 when the entry was
/// deleted from the stream (lost; its pending record is cleared), 0 when
/// the entry exists but is pending with no one: the group lost its record
/// (recreated or reset), so nothing would ever deliver it again.
pub static RETRY_CLAIM: LazyLock<Script> = LazyLock::new(|| {
    allow_oom_stream_script(
        r#"
local stream, group, id = KEYS[1], ARGV[1], ARGV[4]
if not holds_lease(KEYS[2], ARGV[3]) then return -2 end
if not redis.call('XRANGE', stream, id, id)[1] then
  redis.call('XACK', stream, group, id)
  return -1
end
local claimed = redis.call('XCLAIM', stream, group, ARGV[2], 0, id, 'RETRYCOUNT', ARGV[5], 'JUSTID')
if #claimed > 0 then return 1 end
return 0
"#,
    )
});

/// Remove a consumer from a group if, at that moment, it holds nothing.
/// Checked in the same step as the removal: an entry delivered to it in
/// between would otherwise vanish with it. KEYS[1] stream. ARGV[1] group,
/// ARGV[2] consumer. Returns 1 when removed.
pub static REMOVE_IDLE_CONSUMER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"#,
    )
});

/// Retention and the numbers the gauges need, in one call.
///
/// Trims entries older than the cutoff that every group has acknowledged:
/// the trim point never passes any group's oldest pending entry or its
/// first undelivered one.
///
/// Also finds entries something else removed before the group read them.
/// Redis 7.0 keeps counting such entries in the group's lag (entries added
/// minus entries read) for good. The script counts the stored unread
/// entries directly (up to a bound, past which it cannot tell) and takes
/// the lag beyond them as lost; KEYS[2] records, per group, how many were
/// already reported, so each loss counts once and backpressure leaves them
/// out.
///
/// KEYS[1] stream, KEYS[2] lost-count hash. ARGV[1] cutoff id, ARGV[2]
/// group whose figures to report, ARGV[3] `1` when the server supports
/// `XTRIM ... ACKED`, ARGV[4] consumer. Returns `{trimmed, unread, pending,
/// oldest unacknowledged id or '', now ms, newly lost, pending with the
/// consumer}`.
pub static MAINTAIN: LazyLock<Script> = LazyLock::new(|| {
    allow_oom_stream_script(
        r#"
local stream, lost_key = KEYS[1], KEYS[2]
local group, me = ARGV[2], ARGV[4]
local probe = 100
local now = now_ms()
if redis.call('EXISTS', stream) == 0 then return {0, 0, 0, '', now, 0, 0} end
local floor = ARGV[1]
local unread, pending, oldest, missing, mine = 0, 0, '', 0, 0
local groups = groups_of(stream)
for _, g in ipairs(groups) do
  local summary = redis.call('XPENDING', stream, g['name'])
  local first
  if summary[1] > 0 then first = summary[2] else first = id_next(g['last-delivered-id']) end
  if id_cmp(first, floor) < 0 then floor = first end
  if g['name'] == group then
    pending = summary[1]
    if type(summary[4]) == 'table' then
      for _, c in ipairs(summary[4]) do
        if c[1] == me then mine = tonumber(c[2]) end
      end
    end
    local last = g['last-delivered-id']
    local stored = nil
    local info = redis.call('XINFO', 'STREAM', stream)
    for i = 1, #info, 2 do
      if info[i] == 'last-generated-id' and id_cmp(last, info[i + 1]) >= 0 then stored = 0 end
    end
    if stored == nil then
      local after = #redis.call('XRANGE', stream, '(' .. last, '+', 'COUNT', probe)
      if after < probe then stored = after end
    end
    local known = tonumber(redis.call('HGET', lost_key, group) or '0')
    if type(g['lag']) == 'number' and stored ~= nil then
      local beyond = math.max(g['lag'] - stored, 0)
      if beyond > known then missing = beyond - known end
      if beyond ~= known then redis.call('HSET', lost_key, group, beyond) end
      known = beyond
    end
    if stored ~= nil then
      unread = stored
    elseif type(g['lag']) == 'number' then
      unread = math.max(g['lag'] - known, 0)
    else
      unread = redis.call('XLEN', stream)
    end
    local entry = redis.call('XRANGE', stream, first, '+', 'COUNT', 1)[1]
    if summary[1] > 0 then oldest = first elseif entry then oldest = entry[1] end
  end
end
local trimmed = 0
if #groups > 0 then
  if ARGV[3] == '1' then
    trimmed = redis.call('XTRIM', stream, 'MINID', floor, 'ACKED')
  else
    trimmed = redis.call('XTRIM', stream, 'MINID', floor)
  end
end
return {trimmed, unread, pending, oldest, now, missing, mine}
"#,
    )
});

/// Acknowledge a batch, and mark its messages as processed for the group
/// when dedupe is on, if the caller still holds the partition's lease.
///
/// KEYS[1] stream, KEYS[2] lease, KEYS[3..] dedupe keys. ARGV[1] group,
/// ARGV[2] lease value, ARGV[3] marker TTL in ms, ARGV[4..] entry ids.
/// Returns the number acknowledged, or -2 when fenced (nothing changed).
pub static ACK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return -2 end
local acked = redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, 4))
for i = 3, #KEYS do redis.call('SET', KEYS[i], '1', 'PX', ARGV[3]) end
return acked
"#,
    )
});

/// Replay DLQ entries back into their partition, oldest first so that
/// each key keeps its order, each replay recorded in the audit stream.
///
/// KEYS[1] dlq, KEYS[2] stream, KEYS[3] audit, KEYS[4] lost-count hash.
/// ARGV[1] capacity, ARGV[2]
/// actor, ARGV[3] first id, ARGV[4] last id, ARGV[5] most entries.
/// Returns `{replayed, last_dlq_id or '', stopped_by_capacity (0/1)}`.
pub static REDRIVE: LazyLock<Script> = LazyLock::new(|| {
    stream_script(
        r#"
local dlq, stream, audit = KEYS[1], KEYS[2], KEYS[3]
local capacity = tonumber(ARGV[1])
local entries = redis.call('XRANGE', dlq, ARGV[3], ARGV[4], 'COUNT', ARGV[5])
local room = capacity - backlog(stream, KEYS[4])
local replayed, last = 0, ''
local now = tostring(now_ms())
for _, e in ipairs(entries) do
  if room <= 0 then return {replayed, last, 1} end
  local args, meta = {stream, '*'}, {}
  local f = e[2]
  for i = 1, #f, 2 do
    local name = f[i]
    if string.sub(name, 1, 4) == 'dlq.' then meta[name] = f[i + 1] end
  end
  for i = 1, #f, 2 do
    local name, value = f[i], f[i + 1]
    if name == 'meta' then
      -- Carry the attempts spent so far: `id ver ts attempts key`.
      local id, ver, ts, _, key = string.match(value, '^(%S+) (%S+) (%S+) (%S+) (.*)$')
      if id then value = id .. ' ' .. ver .. ' ' .. ts .. ' ' .. (meta['dlq.attempts'] or '0') .. ' ' .. key end
    end
    if string.sub(name, 1, 4) ~= 'dlq.' and name ~= 'grp' then
      args[#args + 1] = name
      args[#args + 1] = value
    end
  end
  args[#args + 1] = 'grp'
  args[#args + 1] = meta['dlq.group'] or ''
  local new_id = redis.call('XADD', unpack(args))
  redis.call('XDEL', dlq, e[1])
  redis.call('XADD', audit, 'MAXLEN', '~', 10000, '*', 'action', 'redrive', 'dlq_id', e[1],
    'origin', meta['dlq.origin'] or '', 'new_id', new_id, 'group', meta['dlq.group'] or '',
    'reason', meta['dlq.reason'] or '', 'actor', ARGV[2], 'at', now)
  replayed = replayed + 1
  last = e[1]
  room = room - 1
end
return {replayed, last, 0}
"#,
    )
});

/// Take the lease on a partition, with a new fencing token.
///
/// The lease's value is `<token>:<owner>`. The token comes from a counter
/// that never expires (KEYS[2]), so every acquisition gets a higher one than
/// any before it, and every script that changes what the group holds checks
/// the whole value: a consumer that lost its lease (paused, cut off) is
/// refused even if it comes back under the same name.
///
/// KEYS[1] lease, KEYS[2] token counter. ARGV[1] owner, ARGV[2] ttl ms.
/// Returns the token, or 0 when another consumer holds the lease.
pub static LEASE_ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
local held = redis.call('GET', KEYS[1])
if held then
  local sep = string.find(held, ':', 1, true)
  if not sep or string.sub(held, sep + 1) ~= ARGV[1] then return 0 end
end
local token = redis.call('INCRBY', KEYS[2], 1)
redis.call('SET', KEYS[1], token .. ':' .. ARGV[1], 'PX', ARGV[2])
return token
"#,
    )
});

/// Extend a lease whose value is ARGV[1] to ARGV[2] ms. Returns 1 if still
/// held.
pub static LEASE_RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#,
    )
});

/// Drop a lease whose value is ARGV[1]. Returns 1 if it was held.
pub static LEASE_RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#,
    )
});

/// Heartbeat of a group member, judged by the server's clock so that
/// client clocks need not agree. KEYS[1] members zset. ARGV[1] member,
/// ARGV[2] ttl ms, ARGV[3] `join` or `leave`. Returns the live members.
pub static MEMBERSHIP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"#!lua flags=allow-oom
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ttl * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#,
    )
});
