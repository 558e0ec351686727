-- Apply one transition of one run atomically: state writes, history, jobs, timers, waits.
-- It runs only if the run's revision is still the one the transition was computed from, so
-- two dispatchers handling events of the same run can never both apply (optimistic lock).
-- KEYS: 1 meta, 2 nodes, 3 outputs, 4 joins, 5 loops, 6 active, 7 events, 8 waits, 9 timers,
--       10 runs index (all), 11 old status index, 12 new status index
-- ARGV: see dispatcher/store.py (_pack): header of 11 values, then counted sections.
local cur = redis.call('HGET', KEYS[1], 'rev')
if (cur or '-1') ~= ARGV[1] then
  return 0
end
local run_json, new_rev, run_id, score, channel = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local retention, abort_key = tonumber(ARGV[7]), ARGV[8]
local ack_stream, ack_group, ack_id = ARGV[9], ARGV[10], ARGV[11]
redis.call('HSET', KEYS[1], 'run', run_json, 'rev', new_rev)
if not cur then
  redis.call('ZADD', KEYS[10], score, run_id)
end
if KEYS[11] ~= KEYS[12] then
  redis.call('ZREM', KEYS[11], run_id)
end
redis.call('ZADD', KEYS[12], score, run_id)

local i = 12
local function count()
  local n = tonumber(ARGV[i]); i = i + 1; return n
end
-- hash sections: nodes, outputs, joins (empty value deletes), loops, active add
for _, key in ipairs({KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]}) do
  for _ = 1, count() do
    local f, v = ARGV[i], ARGV[i + 1]; i = i + 2
    if v == '' then redis.call('HDEL', key, f) else redis.call('HSET', key, f, v) end
  end
end
for _ = 1, count() do redis.call('HDEL', KEYS[6], ARGV[i]); i = i + 1 end  -- active remove
for _ = 1, count() do  -- history: append to the run's stream and publish live
  redis.call('XADD', KEYS[7], '*', 'e', ARGV[i])
  redis.call('PUBLISH', channel, ARGV[i])
  i = i + 1
end
for _ = 1, count() do  -- jobs, in arq's layout; a job id that exists already is a no-op
  local job_key, result_key, queue_key, job_id, job, jscore, expires_ms, wake_key =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7]
  i = i + 8
  if redis.call('EXISTS', job_key, result_key) == 0 then
    redis.call('PSETEX', job_key, expires_ms, job)
    redis.call('ZADD', queue_key, jscore, job_id)
    if wake_key ~= '' then  -- wake a worker with the job's id (oldest first; bounded)
      redis.call('RPUSH', wake_key, job_id)
      redis.call('LTRIM', wake_key, -1024, -1)
    end
  end
end
for _ = 1, count() do redis.call('ZADD', KEYS[9], ARGV[i + 1], ARGV[i]); i = i + 2 end  -- timers
for _ = 1, count() do redis.call('HSET', KEYS[8], ARGV[i], ARGV[i + 1]); i = i + 2 end  -- wait locks
for _ = 1, count() do redis.call('HDEL', KEYS[8], ARGV[i]); i = i + 1 end  -- wait releases
for _ = 1, count() do redis.call('ZADD', abort_key, score, ARGV[i]); i = i + 1 end  -- aborts
if retention and retention > 0 then  -- finished: the run's keys expire after retention
  for k = 1, 8 do redis.call('EXPIRE', KEYS[k], retention) end
end
if ack_id ~= '' then  -- the inbox entry is acknowledged with the change it caused
  redis.call('XACK', ack_stream, ack_group, ack_id)
end
return 1
