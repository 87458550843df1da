-- One kind of store-API write, as fast as it is answered: each request POSTs the next of
-- the bodies in a file (wrapping around at its end) to the path wrk was given.
--
-- Argument (after `--`): the file, and its content type. The file holds bodies one after
-- another, each preceded by its length as 8 decimal digits; bodies differ where the
-- server keeps each one (span ids), so that no write is refused as a duplicate.
--
-- done() prints `AGL_WRK_RESULT {...}` (result.lua) with the count of 2xx answers.

package.path = debug.getinfo(1, "S").source:match("^@(.-)[^/]*$") .. "?.lua;" .. package.path
local result = require("result")  -- done()'s line (result.lua)
setup = result.setup

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

function done(summary, latency)
   result.write(summary, latency, { "count", "non2xx" })
end
