-- POST /v1/events with pre-generated JSON arrays (one per line of the bodies file), rotated; every
-- eventId holds the marker "@@", replaced per request by run tag, thread and counter so that no
-- event repeats.  Arguments (after `--`): bodies file, run tag.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
dofile(here .. "common.lua")

local bodies = {}
local tag
local counter = 0

function init(args)
   for line in io.lines(args[1]) do
      table.insert(bodies, line)
   end
   tag = args[2]
end

function request()
   counter = counter + 1
   local template = bodies[(counter + tid) % #bodies + 1]
   local body = template:gsub("@@", tag .. "-" .. tid .. "-" .. counter)
   return wrk.format("POST", "/v1/events", nil, body)
end

count_body = function(body)
   accepted = accepted + (tonumber(string.match(body, '"accepted"%s*:%s*(%d+)')) or 0)
   duplicates = duplicates + (tonumber(string.match(body, '"duplicates"%s*:%s*(%d+)')) or 0)
   rejected = rejected + (tonumber(string.match(body, '"rejected"%s*:%s*(%d+)')) or 0)
end
