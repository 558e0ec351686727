-- Apply one transition of one run atomically: state writes, history, jobs, timers, waits.
-- It runs only if the run's revision is still the one the transition was computed from, so
-- two dispatchers handling events of the same run can never both apply (optimistic lock).
-- KEYS: 1 meta, 2 nodes, 3 outputs, 4 joins, 5 loops, 6 active, 7 events, 8 waits, 9 timers,
--       10 runs index (all), 11 old status index, 12 new status index, 13 the graph's runs,
--       14 the inbox, 15 arq's abort set, then the jobs' keys, queues and wake lists. Every
--       key the script touches is one of these (as Redis Cluster requires of a script).
-- ARGV: 1 expected revision ('-1': the run must not exist yet), 2 the change set: one JSON
--       array of strings and flat string lists (see dispatcher/changes.py, pack_changes).
--       Every number in it is a string, so cjson's doubles never round a score or a
--       revision. 3 expected stamp ('': the run has none).
-- Race site: the stamp is random per write, so a state a dispatcher knew before Redis lost
-- writes (restart, failover) never matches a state rewritten since at the same revision.
local meta = redis.call('HMGET', KEYS[1], 'rev', 'stamp')
local cur = meta[1]
if (cur or '-1') ~= ARGV[1] or (meta[2] or '') ~= ARGV[3] then
  return 0
end
local c = cjson.decode(ARGV[2])
local run_json, new_rev, run_id, score, channel = c[1], c[2], c[3], c[4], c[5]
local retention = tonumber(c[6])
local ack_group, ack_id = c[7], c[8]
local inbox, abort_key = KEYS[14], KEYS[15]
redis.call('HSET', KEYS[1], 'run', run_json, 'rev', new_rev, 'stamp', c[21])  -- a new stamp
-- the run indexes: created (a new run), and the status it is in, scored by when it entered
-- it: a write that keeps a live run's status leaves the index alone; a finished run's
-- score is its last write, from which its retention counts (its keys' expiry, below)
if not cur then
  redis.call('ZADD', KEYS[10], score, run_id)
  redis.call('ZADD', KEYS[13], score, run_id)
  redis.call('ZADD', KEYS[12], score, run_id)
elseif KEYS[11] ~= KEYS[12] then
  redis.call('ZREM', KEYS[11], run_id)
  redis.call('ZADD', KEYS[12], score, run_id)
elseif retention and retention > 0 then
  redis.call('ZADD', KEYS[12], score, run_id)
end

-- hash sections (field, value, ...): nodes, outputs, joins (empty value deletes), loops,
-- active add
-- One HSET and one HDEL per hash (in chunks: a map's thousands of item fields stay under
-- Lua's limit on a call's arguments), not one call per field.
local CHUNK = 400
local function flush(cmd, key, args)
  if #args > 0 then redis.call(cmd, key, unpack(args)) end
end
for s, key in ipairs({KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}) do
  local list = c[8 + s]
  local sets, dels = {}, {}
  for j = 1, #list, 2 do
    local f, v = list[j], list[j + 1]
    if v == '' then
      dels[#dels + 1] = f
      if #dels >= CHUNK then flush('HDEL', key, dels); dels = {} end
    else
      sets[#sets + 1] = f
      sets[#sets + 1] = v
      if #sets >= 2 * CHUNK then flush('HSET', key, sets); sets = {} end
    end
  end
  flush('HSET', key, sets)
  flush('HDEL', key, dels)
end
local gone = c[14]  -- active remove: one HDEL per chunk
for lo = 1, #gone, CHUNK do
  redis.call('HDEL', KEYS[6], unpack(gone, lo, math.min(#gone, lo + CHUNK - 1)))
end
-- history: each event's key -> JSON text (HISTORY_FIELDS, graph_core/events.py) appended
-- to the run's stream, and published live as one JSON object, run id first
local h, head = c[15], c[25]
for j = 1, #h, 7 do
  local v, kind, at, node, visit, attempt, data =
    h[j], h[j + 1], h[j + 2], h[j + 3], h[j + 4], h[j + 5], h[j + 6]
  redis.call('XADD', KEYS[7], '*', 'v', v, 'type', kind, 'at', at, 'node_id', node,
    'visit', visit, 'attempt', attempt, 'data', data)
  redis.call(c[26], channel, head .. '"v":' .. v .. ',"type":' .. kind .. ',"at":' .. at
    .. ',"node_id":' .. node .. ',"visit":' .. visit .. ',"attempt":' .. attempt
    .. ',"data":' .. data .. '}')
end
local jobs = c[16]
local due = nil  -- the jobs' score: the server's clock (ms), the one a worker's claim reads
if #jobs > 0 then
  local t = redis.call('TIME')
  due = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
end
for j = 1, #jobs, 8 do  -- jobs, in arq's layout; a job id that exists already is a no-op
  -- the job's key, its queue and its wake list are KEYS (their indexes here; 0: no wake list)
  local job_key, queue_key, job_id, job, expires_ms, wake_key, token, offset =
    KEYS[tonumber(jobs[j])], KEYS[tonumber(jobs[j + 1])], jobs[j + 2], jobs[j + 3],
    jobs[j + 4], KEYS[tonumber(jobs[j + 5])] or '', jobs[j + 6], jobs[j + 7]
  if redis.call('SET', job_key, job, 'PX', expires_ms, 'NX') then
    local at = due  -- the run's priority (offset) sorts its jobs first
    if offset ~= '0' then at = string.format('%d', tonumber(due) - tonumber(offset)) end
    redis.call('ZADD', queue_key, at, job_id)
    if wake_key ~= '' then
      -- wake a worker with the job's id, its graph and its score (oldest first): a claim
      -- that finds the job at that score knows it due without reading the clock
      local head, rest = string.match(token, '^([^|]*|[^|]*)(|.*)$')
      if head then token = head .. '@' .. at .. rest end
      if redis.call('RPUSH', wake_key, token) > 1024 then
        redis.call('LTRIM', wake_key, -1024, -1)
      end
    end
  end
end
local timers = c[17]
for j = 1, #timers, 2 do redis.call('ZADD', KEYS[9], timers[j + 1], timers[j]) end
local waits = c[18]
for j = 1, #waits, 2 do redis.call('HSET', KEYS[8], waits[j], waits[j + 1]) end  -- wait locks
for _, n in ipairs(c[19]) do redis.call('HDEL', KEYS[8], n) end  -- wait releases
for _, a in ipairs(c[20]) do redis.call('ZADD', abort_key, score, a) end  -- aborts
for _, m in ipairs(c[22] or {}) do redis.call('ZREM', KEYS[9], m) end  -- timers dropped
if c[23] == '1' then  -- a finished run goes on (a retry): its keys no longer expire
  for k = 1, 8 do redis.call('PERSIST', KEYS[k]) end
end
for _, m in ipairs(c[24] or {}) do  -- inbox messages: child runs started, cancelled, ended
  redis.call('XADD', inbox, '*', 'm', m)
end
if retention and retention > 0 then  -- finished: the run's keys expire after retention
  -- A stream's newest node keeps the 4 KB the server allocated ahead for it, so a short
  -- history would hold ~4 KB for the whole retention: rewrite it at its size (one node
  -- holds up to 100 entries; a longer history's older nodes were trimmed to size already).
  -- Only memory is at stake: where DUMP or RESTORE is refused (an ACL user without
  -- @dangerous, a managed server that disables them), the history stays as it is.
  if redis.call('XLEN', KEYS[7]) <= 100 then
    local dumped = redis.pcall('DUMP', KEYS[7])
    if type(dumped) == 'string' then redis.pcall('RESTORE', KEYS[7], 0, dumped, 'REPLACE') end
  end
  for k = 1, 8 do redis.call('EXPIRE', KEYS[k], retention) end
end
if ack_id ~= '' then  -- the inbox entry is acknowledged with the change it caused
  redis.call('XACK', inbox, ack_group, ack_id)
end
return 1
