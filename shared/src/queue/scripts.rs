//! The queue's Lua scripts. Each runs atomically in Redis and touches a
//! bounded number of entries per call, however long the queue is: a backlog
//! of any size is worked off in slices, never unpacked in one go.
//!
//! Times are Redis's own clock (`TIME`), so workers on machines whose clocks
//! disagree still agree on when a lease runs out.
//!
//! Keys of a queue `q` (see [`super::Keys`]):
//! - `queue:{q}:pending`  LIST of entry ids waiting (pushed left, taken right)
//! - `queue:{q}:data`     HASH id -> the job's JSON
//! - `queue:{q}:leased`   ZSET id -> lease deadline (ms): taken, being worked on
//! - `queue:{q}:attempts` HASH id -> deliveries so far (the lease token)
//! - `queue:{q}:delayed`  ZSET id -> when to retry (ms): failed attempts
//! - `queue:{q}:wake`     LIST of wake-up tokens for idle consumers (bounded)
//! - `queue:{q}:dead`     LIST of jobs no worker could read (bounded, expiring)

use std::sync::LazyLock;

use redis::Script;

use crate::redis_conn::with_clock;

/// Take up to `ARGV[2]` entries: first put back (at the head) at most
/// `ARGV[3]` entries whose lease ran out and as many due retries, then pop,
/// lease each for `ARGV[1]` ms and count the delivery. Ids whose data is gone
/// (already finished) are skipped. Returns `[id, json, attempt, ...]`.
pub static FETCH: LazyLock<Script> = LazyLock::new(|| {
    with_clock(
        r#"
local limit = tonumber(ARGV[3])
local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, limit)
for i = 1, #expired do
  redis.call('ZREM', KEYS[3], expired[i])
  redis.call('RPUSH', KEYS[1], expired[i])
end
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, limit)
for i = 1, #due do
  redis.call('ZREM', KEYS[5], due[i])
  redis.call('RPUSH', KEYS[1], due[i])
end
local want = tonumber(ARGV[2])
local deadline = now + tonumber(ARGV[1])
local out = {}
local tries = 0
while #out < want * 3 and tries < want * 4 do
  tries = tries + 1
  local id = redis.call('RPOP', KEYS[1])
  if not id then break end
  local json = redis.call('HGET', KEYS[2], id)
  if json then
    local attempt = redis.call('HINCRBY', KEYS[4], id, 1)
    redis.call('ZADD', KEYS[3], deadline, id)
    out[#out + 1] = id
    out[#out + 1] = json
    out[#out + 1] = tostring(attempt)
  end
end
return out
"#,
    )
});

/// Extend the leases of `(id, attempt)` pairs (`ARGV[2..]`) by `ARGV[1]` ms
/// from now, where the caller still holds them. Returns the ids it no
/// longer holds (the lease ran out and the entry went back to the queue).
pub static RENEW: LazyLock<Script> = LazyLock::new(|| {
    with_clock(
        r#"
local deadline = now + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost
"#,
    )
});

/// Settle `(id, attempt, retry_after_ms, counted)` quadruples (`ARGV`): a
/// negative `retry_after_ms` means done (the entry and its data are
/// removed), else the entry is retried that many ms from now; `counted` 0
/// gives the delivery back uncounted (a job handed back unstarted, or put
/// off), so its next delivery has the same attempt number. A settlement by a
/// holder whose lease was taken over (the attempt moved on) is ignored.
/// Returns how many were applied.
pub static SETTLE: LazyLock<Script> = LazyLock::new(|| {
    with_clock(
        r#"
local applied = 0
for i = 1, #ARGV, 4 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[3], id) == ARGV[i + 1] then
    local after = tonumber(ARGV[i + 2])
    if after < 0 then
      redis.call('ZREM', KEYS[1], id)
      redis.call('HDEL', KEYS[2], id)
      redis.call('HDEL', KEYS[3], id)
    elseif redis.call('ZREM', KEYS[1], id) == 1 then
      if ARGV[i + 3] == '0' then redis.call('HINCRBY', KEYS[3], id, -1) end
      redis.call('ZADD', KEYS[4], now + after, id)
    end
    applied = applied + 1
  end
end
return applied
"#,
    )
});

/// Keep a job no worker could read: push `ARGV[1]` (a [`super::DeadLetter`])
/// onto the dead-letter list `KEYS[1]`, keep the newest `ARGV[2]`, expire
/// the list `ARGV[3]` s after the last one, and remove entry `ARGV[4]` from
/// the queue (`KEYS[2]` leased, `KEYS[3]` data, `KEYS[4]` attempts).
pub static BURY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('LPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('ZREM', KEYS[2], ARGV[4])
redis.call('HDEL', KEYS[3], ARGV[4])
redis.call('HDEL', KEYS[4], ARGV[4])
return 1
"#,
    )
});
