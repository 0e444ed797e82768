-- Shared prelude of the sale_* scripts: the admission queue of one flash sale, one slot.
-- KEYS[1] config JSON     KEYS[2] queue zset: ticket -> place     KEYS[3] tickets hash: id -> JSON
-- KEYS[4] active zset: admitted ticket -> token expiry            KEYS[5] state hash
-- KEYS[6] customers hash: customer key -> ticket id (one live ticket per customer)
-- Codes continue engine/errors.py Code.
local S = {
  config = KEYS[1], queue = KEYS[2], tickets = KEYS[3], active = KEYS[4], state = KEYS[5],
  customers = KEYS[6],
}
local OK, UNKNOWN_SALE, SALE_ENDED, TICKET_NOT_FOUND = 0, 13, 14, 15
local ADMISSION_INVALID, ADMISSION_USED, ADMISSION_EXPIRED = 16, 17, 18
local AFTER_START = 2 ^ 41 -- places of later joins; randomised pre-start joins draw one below

local server_time = redis.call('TIME')
local NOW = tonumber(server_time[1]) * 1000 + math.floor(tonumber(server_time[2]) / 1000)

local raw_config = redis.call('GET', S.config)
if not raw_config then return { UNKNOWN_SALE } end
local C = cjson.decode(raw_config)

local function ticket(id)
  local raw = redis.call('HGET', S.tickets, id)
  return raw and cjson.decode(raw)
end

local function put(id, t)
  redis.call('HSET', S.tickets, id, cjson.encode(t))
end

local function sold_out()
  return redis.call('HGET', S.state, 'sold_out') == '1'
end

-- Admits queue heads in place order at rate_per_s (a token bucket holding one second's
-- worth), while fewer than max_active admissions are live. A head not polled for idle_ms
-- is dropped instead. Cost: O(log n) per ticket admitted or dropped.
local function admit()
  if NOW < C.start_ms or NOW >= C.end_ms or sold_out() then return end
  local st = redis.call('HMGET', S.state, 'tokens', 'last_ms')
  local tokens = tonumber(st[1]) or 0
  local last = tonumber(st[2]) or C.start_ms
  tokens = math.min(math.max(1, C.rate_per_s), tokens + (NOW - last) * C.rate_per_s / 1000)
  redis.call('ZREMRANGEBYSCORE', S.active, '-inf', NOW) -- expired tokens free their slots
  local slots = C.max_active - redis.call('ZCARD', S.active)
  while tokens >= 1 and slots > 0 do
    local head = redis.call('ZRANGE', S.queue, 0, 0)[1]
    if not head then break end
    redis.call('ZREM', S.queue, head)
    local t = ticket(head)
    if t.polled + C.idle_ms < NOW then
      t.st = 'dropped'
      redis.call('HDEL', S.customers, t.ck)
    else
      t.st, t.exp = 'admitted', NOW + C.token_ttl_ms
      redis.call('ZADD', S.active, t.exp, head)
      redis.call('HINCRBY', S.state, 'admitted', 1)
      tokens, slots = tokens - 1, slots - 1
    end
    put(head, t)
  end
  redis.call('HSET', S.state, 'tokens', tokens, 'last_ms', NOW)
end

-- A ticket's answer: {OK, id, state, a, b}. waiting: a = place (1 = next; -1 = drawn at
-- the start), b = queue length. admitted, used and expired: a = token expiry.
local function status(id, t)
  if t.st == 'waiting' and (NOW >= C.end_ms or sold_out()) then
    t.st = NOW >= C.end_ms and 'ended' or 'sold_out'
    redis.call('ZREM', S.queue, id)
    redis.call('HDEL', S.customers, t.ck)
    put(id, t)
  elseif t.st == 'admitted' and t.exp <= NOW then
    t.st = 'expired'
    redis.call('HDEL', S.customers, t.ck)
    put(id, t)
  end
  if t.st == 'waiting' then
    local place = -1
    if NOW >= C.start_ms or not C.randomize then place = redis.call('ZRANK', S.queue, id) + 1 end
    return { OK, id, 'waiting', place, redis.call('ZCARD', S.queue) }
  end
  return { OK, id, t.st, t.exp or 0, 0 }
end
