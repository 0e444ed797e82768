-- Spend an admission on a hold (once), or give it back when the hold was refused.
-- KEYS[1..6] sale keys (lua/sale_lib.lua)
-- ARGV[1] ticket id   ARGV[2] customer key   ARGV[3] token expiry (ms)   ARGV[4] 'use' | 'undo'
-- Returns {OK, id} or {ADMISSION_INVALID | ADMISSION_USED | ADMISSION_EXPIRED, id}
local id, ck, exp, action = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
local t = ticket(id)
if not t or t.ck ~= ck or t.exp ~= exp then return { ADMISSION_INVALID, id } end
if action == 'undo' then
  -- The buyer may try again with the token until it expires, but no longer blocks one of
  -- the max_active slots: a refusal (sold out, past the limit) must not stall the queue.
  if t.st == 'used' then
    t.st = 'admitted'
    put(id, t)
  end
  return { OK, id }
end
if t.st == 'used' then return { ADMISSION_USED, id } end
if t.st ~= 'admitted' or t.exp <= NOW then return { ADMISSION_EXPIRED, id } end
t.st = 'used'
put(id, t)
redis.call('ZREM', S.active, id) -- the hold now keeps the units; the slot goes to the next buyer
return { OK, id }
