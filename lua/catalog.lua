-- Store this partition's copy of the catalog if it is newer; return the copy stored now.
-- KEYS[1..7] partition keys
-- ARGV[1] catalog JSON with an integer "version", or '' to only read
-- Returns {0, catalog JSON stored now, or ''}
local stored = redis.call('GET', K.catalog)
if ARGV[1] ~= '' then
  local version = stored and cjson.decode(stored).version or 0
  if cjson.decode(ARGV[1]).version > version then
    redis.call('SET', K.catalog, ARGV[1])
    emit_json('{"type":"catalog","catalog":' .. ARGV[1] .. '}')
    commit()
    stored = ARGV[1]
  end
end
return { OK, stored or '' }
