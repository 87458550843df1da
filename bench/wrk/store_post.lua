-- One kind of store-API write, as fast as it is answered: each request POSTs the next of
-- the bodies in a file (wrapping around at its end) to the path wrk was given.
--
-- Argument (after `--`): the file, and its content type. The file holds bodies one after
-- another, each preceded by its length as 8 decimal digits; bodies differ where the
-- server keeps each one (span ids), so that no write is refused as a duplicate.
--
-- done() prints `AGL_WRK_RESULT {...}` with the count of 2xx answers and the latency
-- distribution (microseconds).

local bodies = {}
local next_body = 1
local headers = {}
count, non2xx = 0, 0  -- read by done() through thread:get

function init(args)
   local file = assert(io.open(args[1], "rb"))
   local data = file:read("*a")
   file:close()
   local at = 1
   while at <= #data do
      local length = tonumber(data:sub(at, at + 7))
      bodies[#bodies + 1] = data:sub(at + 8, at + 7 + length)
      at = at + 8 + length
   end
   headers["Content-Type"] = args[2]
end

function request()
   local body = bodies[next_body]
   next_body = next_body % #bodies + 1
   return wrk.format("POST", nil, headers, body)
end

function response(status)
   if status >= 200 and status < 300 then
      count = count + 1
   else
      non2xx = non2xx + 1
   end
end

local threads = {}

function setup(thread)
   threads[#threads + 1] = thread
end

function done(summary, latency, requests)
   local t = threads[1]
   local e = summary.errors
   io.write(string.format(
      'AGL_WRK_RESULT {"duration_us":%.0f,"requests":%.0f,"count":%.0f,"non2xx":%.0f,"socket_errors":%.0f,' ..
      '"latency_us":{"p50":%.0f,"p99":%.0f,"max":%.0f}}\n',
      summary.duration, summary.requests, t:get("count"), t:get("non2xx"), e.connect + e.read + e.write + e.timeout,
      latency:percentile(50), latency:percentile(99), latency.max))
end
