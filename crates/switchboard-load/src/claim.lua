-- A claim-like script for the Redis ceiling: the Redis work at the heart of
-- one hand-off, without the dispatcher's bookkeeping. Take the longest-idle
-- available agent of a (language, skill) set, record the offer, append an
-- event to the pool's feed, and put the agent back at the end of the idle
-- order (so the set stays full for the benchmark).
--
-- KEYS[1] available agents (sorted set, score = idle since ms)
-- KEYS[2] offers (hash conversation -> agent:at)
-- KEYS[3] the event feed (stream)
-- ARGV[1] conversation id
local popped = redis.call('ZPOPMIN', KEYS[1])
if #popped == 0 then
  return false
end
local agent = popped[1]
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
redis.call('HSET', KEYS[2], ARGV[1], agent .. ':' .. now)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', 10000, '*', 'offered', ARGV[1], 'agent', agent)
redis.call('ZADD', KEYS[1], now, agent)
return agent
