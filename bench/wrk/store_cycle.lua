-- Store-API rollout cycles: dequeue a rollout for a worker, then report its attempt done.
--
-- Meant for one wrk thread (-t1), whose Lua state every connection shares. request()
-- sends `POST /v1/agl/rollouts/{rollout}/attempts/{attempt}` ({"status": "succeeded"}) for
-- the oldest dequeued-but-unreported attempt if there is one, else
-- `POST /v1/agl/queues/rollouts/dequeue`; response() collects what dequeue hands out. A
-- cycle is an update answered with 200. The rollouts are enqueued before the run.
--
-- done() prints `AGL_WRK_RESULT {...}` (result.lua) with the counts.

package.path = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "?.lua;" .. package.path
local result = require("result")  -- done()'s line (result.lua)
setup = result.setup

local dequeue_body = '{"limit":1,"worker_id":"bench"}'
local update_body = '{"status":"succeeded"}'
local headers = { ["Content-Type"] = "application/json" }
local pending = {}  -- FIFO of "rollout_id/attempts/attempt_id"
local first, last = 1, 0

count, dequeues, empty, unexpected, non2xx = 0, 0, 0, 0, 0  -- read by done() through thread:get

function request()
   if first <= last then
      local path = pending[first]
      pending[first] = nil
      first = first + 1
      return wrk.format("POST", "/v1/agl/rollouts/" .. path, headers, update_body)
   end
   return wrk.format("POST", "/v1/agl/queues/rollouts/dequeue", headers, dequeue_body)
end

function response(status, _, body)
   if status ~= 200 then
      non2xx = non2xx + 1
      return
   end
   if body:sub(1, 1) == "[" then
      dequeues = dequeues + 1
      local rollout = body:match('"rollout_id":"(ro%-[%x]+)"')
      local attempt = body:match('"attempt_id":"(at%-[%x]+)"')
      if rollout and attempt then
         last = last + 1
         pending[last] = rollout .. "/attempts/" .. attempt
      else
         empty = empty + 1
      end
   elseif body:find('"status":"succeeded"', 1, true) then
      count = count + 1
   else
      unexpected = unexpected + 1
   end
end

function done(summary, latency)
   result.write(summary, latency, { "count", "dequeues", "empty", "unexpected", "non2xx" })
end
