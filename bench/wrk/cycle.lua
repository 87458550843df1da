-- Claim + report cycles on the Agent Lightning legacy worker routes.
--
-- Meant for one wrk thread (-t1), whose Lua state every connection shares: a rollout id
-- claimed on one connection may be reported on another. request() sends `POST /rollout`
-- for the oldest claimed-but-unreported rollout id if there is one, else `GET /task`;
-- response() collects the ids that `GET /task` hands out. A cycle is a report answered
-- with 200.
--
-- Argument (after `--`): a file holding the report's JSON body, in which @ROLLOUT_ID@ stands
-- for the rollout id. Without it a small body is sent.
--
-- done() prints `AGL_WRK_RESULT {...}` (result.lua) with the counts, and the size of a report
-- body as report_body_bytes; its latencies are over every request, claims and reports alike.

package.path = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "?.lua;" .. package.path
local result = require("result")  -- done()'s line (result.lua)
setup = result.setup

local PLACEHOLDER = "@ROLLOUT_ID@"
local body_head = '{"rollout_id":"'
local body_tail = '","final_reward":0.5,"triplets":[{"prompt":"p","response":"r","reward":0.5}],"metadata":{}}'
local report_headers = { ["Content-Type"] = "application/json" }
local claim_request

local claimed = {}  -- FIFO of rollout ids: claimed[first .. last]
local first, last = 1, 0

-- read by done() through thread:get
claims, empty, cycles, unexpected, non2xx, body_bytes = 0, 0, 0, 0, 0, 0

function init(args)
   if args[1] then
      local file = assert(io.open(args[1], "rb"))
      local text = file:read("*a")
      file:close()
      local at = text:find(PLACEHOLDER, 1, true)
      assert(at, "no " .. PLACEHOLDER .. " in " .. args[1])
      body_head = text:sub(1, at - 1)
      body_tail = text:sub(at + #PLACEHOLDER)
   end
   body_bytes = #body_head + #body_tail + 41  -- a rollout id is "rollout-" and a 36-character uuid
   claim_request = wrk.format("GET", "/task")
end

function request()
   if first <= last then
      local id = claimed[first]
      claimed[first] = nil
      first = first + 1
      return wrk.format("POST", "/rollout", report_headers, body_head .. id .. body_tail)
   end
   return claim_request
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
   elseif body:find('"is_available"', 1, true) then
      local id = body:match('"rollout_id"%s*:%s*"([^"]+)"')
      if id then
         claims = claims + 1
         last = last + 1
         claimed[last] = id
      else
         empty = empty + 1  -- the queue ran dry
      end
   elseif body:find("received and stored", 1, true) then
      cycles = cycles + 1
   else
      unexpected = unexpected + 1
   end
end

function done(summary, latency)
   local body_bytes = string.format('"report_body_bytes":%.0f', result.threads[1]:get("body_bytes"))
   result.write(summary, latency, { "claims", "empty", "cycles", "unexpected", "non2xx" }, body_bytes)
end
