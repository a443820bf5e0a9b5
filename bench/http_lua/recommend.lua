-- GET /v1/users/<id>/recommendations?k=10 for users drawn at random from a file of known user ids
-- (one per line).  Arguments (after `--`): users file.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local users = {}

function init(args)
   for line in io.lines(args[1]) do
      table.insert(users, line)
   end
   math.randomseed(os.time() * 1000 + tid)
end

function request()
   local user = users[math.random(1, #users)]
   return wrk.format("GET", "/v1/users/" .. user .. "/recommendations?k=10")
end
