"""The Lua scripts of the upload store (see ``tusserver.state``): each does
one request's Redis work in one round trip, atomically. Plain strings; the
store registers them with its client.

Keys of one upload share a hash tag (``tus:{<id>}:...``), so each script
touches one Redis Cluster slot. The expiry and retention indexes exist once
per slot (see ``tusserver.slots``), so a script keeps its upload's entries too.
"""

# The upload id, from KEYS[1] = tus:{<id>}:info: an index member is the id.
_UPLOAD_ID = "string.sub(KEYS[1], 6, -7)"

# KEYS: info, lock, gone, the slot's expiry index. ARGV: lock token ("" =
# nobody holds it), lock ttl_ms, created, expires ("" = never), then the
# record's field/value pairs. Creates the record only if the id is free: no
# record, no tombstone (an id a pre-create hook chose may be taken). A retried
# call (reply lost) finds its own record by its creation time.
CREATE = (
    """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'created') == ARGV[3] then return 'ok' end
  return 'taken'
end
if redis.call('EXISTS', KEYS[3]) == 1 then return 'taken' end
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[4], """
    + _UPLOAD_ID
    + """) end
if ARGV[1] ~= '' then redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2]) end
return 'ok'
"""
)

# KEYS: info, lock, gone. ARGV: token, ttl_ms.
# Returns {status, flat record} where status is claimed|locked|missing|gone.
# (A read that takes no lock is a plain HGETALL: ``UploadStore.read``.)
CLAIM = """
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return {'gone'} end
  return {'missing'}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'claimed', record}
end
-- A retried call (reply lost, redis-py resent it) finds its own token.
if redis.call('GET', KEYS[2]) == ARGV[1] then return {'claimed', record} end
return {'locked', record}
"""

# KEYS: info, lock, gone. ARGV: token, ttl_ms. CLAIM that takes the lock
# even from a running request (an operator's forced termination): that
# request's next EXTEND, COMMIT or COMPLETE finds another token and is refused.
SEIZE = """
local record = redis.call('HGETALL', KEYS[1])
if #record == 0 then
  if redis.call('EXISTS', KEYS[3]) == 1 then return {'gone'} end
  return {'missing'}
end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return {'claimed', record}
"""

# KEYS: info, lock. Returns {lock PTTL (-2: no lock), flat record} for an
# operator's listing on a Redis Cluster: one reply per upload instead of
# two, which halves what the client parses for each.
INSPECT = """
return {redis.call('PTTL', KEYS[2]), redis.call('HGETALL', KEYS[1])}
"""

# KEYS: info and lock of each of many uploads, in pairs. INSPECT for all of
# them in one reply, {ttl, record, ttl, record, ...}: a listing's batch on a
# standalone Redis, where a script may touch many slots. Read only, and
# about a millisecond per 1,000 uploads, so Redis is never held long.
INSPECT_MANY = """
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call('PTTL', KEYS[i + 1])
  out[#out + 1] = redis.call('HGETALL', KEYS[i])
end
return out
"""

# KEYS: info, lock. ARGV: token, expected offset, new offset, release (1|0),
# new expires ("" = unchanged; only an unpublished upload has one), a
# deferred length to record with the bytes ("" = none: see SET_LENGTH).
COMMIT = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 'lost' end
local current = redis.call('HGET', KEYS[1], 'offset')
if not current then return 'missing' end
-- A retried call (reply lost, redis-py resent it) finds its own commit done;
-- "its own": the same offset committed by another writer (this one's lock
-- lapsed, the other took over and wrote the same range) does not count.
-- A checkpoint of the same writer may have committed this offset already;
-- the lock is released all the same when asked. The committer is written
-- again, so that a durable commit's WAIT waits for a write of its own, sent
-- behind the one it repeats (WAIT waits for the replication stream only up
-- to its own connection's last write).
if current == ARGV[3] and redis.call('HGET', KEYS[1], 'committer') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'committer', ARGV[1])
  if holder and ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
  return 'ok'
end
if current ~= ARGV[2] then return 'moved' end
if ARGV[6] ~= '' then
  local length = redis.call('HGET', KEYS[1], 'length')
  if length and length ~= '' and length ~= ARGV[6] then return 'moved' end
  redis.call('HSET', KEYS[1], 'length', ARGV[6])
end
redis.call('HSET', KEYS[1], 'offset', ARGV[3], 'committer', ARGV[1])
if ARGV[5] ~= '' and redis.call('HEXISTS', KEYS[1], 'expires') == 1 then
  redis.call('HSET', KEYS[1], 'expires', ARGV[5])
end
if holder and ARGV[4] == '1' then redis.call('DEL', KEYS[2]) end
return 'ok'
"""

# KEYS: info, lock. ARGV: token, expected offset, length. Records a deferred
# length (creation-defer-length) by compare-and-set, as COMMIT moves the
# offset: only while the writer holds the lock or nobody does, at the offset
# it started from, and while the length is still unset. A retried call (reply
# lost) finds the same length recorded.
SET_LENGTH = """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 'lost' end
local known = redis.call('HMGET', KEYS[1], 'offset', 'length')
if not known[1] then return 'missing' end
if known[2] and known[2] ~= '' then
  if known[2] == ARGV[3] then return 'ok' end
  return 'moved'
end
if known[1] ~= ARGV[2] then return 'moved' end
redis.call('HSET', KEYS[1], 'length', ARGV[3])
return 'ok'
"""

# KEYS: info, lock, post-finish event, the slot's expiry and retention
# indexes. ARGV: token, state, published (1|0), the post-finish event ("" =
# none), retire at ("" = never), then field/value pairs to set. Marks the
# upload finished (complete: published, or a concatenation part kept staged;
# failed: never to be published) and releases the lock in the same step. A
# published file does not expire: it leaves the expiry index, for the
# retention index if its record is to be retired. The event is stored in the
# same step, so it exists exactly when the finish is recorded (see
# hook_delivery).
COMPLETE = (
    """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 'lost' end
if redis.call('EXISTS', KEYS[1]) == 0 then return 'missing' end
redis.call('HSET', KEYS[1], 'state', ARGV[2])
if ARGV[4] ~= '' then redis.call('SET', KEYS[3], ARGV[4]) end
for i = 6, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[3] == '1' then
  redis.call('HDEL', KEYS[1], 'expires')
  redis.call('ZREM', KEYS[4], """
    + _UPLOAD_ID
    + """)
  if ARGV[5] ~= '' then redis.call('ZADD', KEYS[5], ARGV[5], """
    + _UPLOAD_ID
    + """) end
end
if holder then redis.call('DEL', KEYS[2]) end
return 'ok'
"""
)

# KEYS: info, lock, gone, the slot's expiry and retention indexes. ARGV:
# token, gone ttl in seconds. The record goes, and its index entries with it.
TERMINATE = (
    """
local holder = redis.call('GET', KEYS[2])
if holder and holder ~= ARGV[1] then return 'lost' end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[4], """
    + _UPLOAD_ID
    + """)
redis.call('ZREM', KEYS[5], """
    + _UPLOAD_ID
    + """)
redis.call('SET', KEYS[3], '1', 'EX', ARGV[2])
return 'ok'
"""
)

# KEYS: lock. ARGV: token. Compare-and-delete.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: lock. ARGV: token, ttl_ms. Compare-and-extend.
EXTEND = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
