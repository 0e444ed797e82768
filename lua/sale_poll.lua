-- Poll a ticket: it stays in line while it polls, and learns when it is admitted.
-- KEYS[1..6] sale keys (lua/sale_lib.lua)
-- ARGV[1] ticket id   ARGV[2] customer key (a ticket answers only its own customer)
-- Returns a ticket status (see status()) or {TICKET_NOT_FOUND, id}
local id, ck = ARGV[1], ARGV[2]
local t = ticket(id)
if not t or t.ck ~= ck then return { TICKET_NOT_FOUND, id } end
if t.st == 'waiting' then
  t.polled = NOW
  put(id, t)
end
admit()
return status(id, ticket(id))
