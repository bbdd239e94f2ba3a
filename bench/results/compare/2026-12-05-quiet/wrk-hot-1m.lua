math.randomseed(1)
local paths = {
  "/synthetic/hot1m-0?size=4194304",
  "/synthetic/hot1m-1?size=4194304",
  "/synthetic/hot1m-2?size=4194304",
  "/synthetic/hot1m-3?size=4194304",
  "/synthetic/hot1m-4?size=4194304",
  "/synthetic/hot1m-5?size=4194304",
  "/synthetic/hot1m-6?size=4194304",
  "/synthetic/hot1m-7?size=4194304",
  "/synthetic/hot1m-8?size=4194304",
  "/synthetic/hot1m-9?size=4194304",
  "/synthetic/hot1m-10?size=4194304",
  "/synthetic/hot1m-11?size=4194304",
  "/synthetic/hot1m-12?size=4194304",
  "/synthetic/hot1m-13?size=4194304",
  "/synthetic/hot1m-14?size=4194304",
  "/synthetic/hot1m-15?size=4194304",
}
local chunks = 4
local cs = 1048576
request = function()
  local p = paths[math.random(#paths)]
  local c = math.random(chunks) - 1
  return wrk.format("GET", p, {["Range"] = "bytes=" .. (c * cs) .. "-" .. ((c + 1) * cs - 1)})
end
