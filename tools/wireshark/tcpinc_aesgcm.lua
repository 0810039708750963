-- AES-GCM (AES-128 and AES-256, 12-byte nonce, 16-byte tag) in plain Lua 5.2 with bit32,
-- for tcpinc.lua: Wireshark 4.0 gives Lua scripts no cipher (no Gcrypt binding), and
-- tcpcrypt frames are AEAD_AES_128_GCM / AEAD_AES_256_GCM (RFC 8548 §6, RFC 5116 §5.1-5.2).
-- Algorithms as FIPS 197 (AES) and NIST SP 800-38D (GCM) give them; slow (about a
-- millisecond per kilobyte) but only used on the frames of small analysis captures.
-- Returns a table; loaded with dofile() by tcpinc.lua (harmless if loaded as a plugin).

local band, bor, bxor = bit32.band, bit32.bor, bit32.bxor
local lshift, rshift = bit32.lshift, bit32.rshift

-- GF(2^8) tables (FIPS 197 §4): exp/log over generator 3, S-box by inversion + affine map.
local EXP, LOG, XT, SBOX = {}, {}, {}, {}
do
  local x = 1
  for i = 0, 254 do
    EXP[i], LOG[x] = x, i
    local x2 = lshift(x, 1)
    if band(x2, 0x100) ~= 0 then x2 = bxor(x2, 0x11b) end
    x = bxor(x2, x)  -- x * 3
  end
  for i = 0, 255 do
    local d = lshift(i, 1)
    if band(d, 0x100) ~= 0 then d = bxor(d, 0x11b) end
    XT[i] = d  -- xtime: i * 2
    local inv = (i == 0) and 0 or EXP[(255 - LOG[i]) % 255]
    local s, r = inv, inv
    for _ = 1, 4 do
      r = band(bor(lshift(r, 1), rshift(r, 7)), 0xff)
      s = bxor(s, r)
    end
    SBOX[i] = bxor(s, 0x63)
  end
end

-- Key expansion (FIPS 197 §5.2): round keys as one flat byte array, 1-indexed.
local function expand(key)
  local nk = #key / 4
  local nr = nk + 6
  local w = { key:byte(1, -1) }
  local rcon = 1
  for i = nk, 4 * (nr + 1) - 1 do
    local p = (i - 1) * 4
    local t0, t1, t2, t3 = w[p + 1], w[p + 2], w[p + 3], w[p + 4]
    if i % nk == 0 then
      t0, t1, t2, t3 = bxor(SBOX[t1], rcon), SBOX[t2], SBOX[t3], SBOX[t0]
      rcon = XT[rcon]
    elseif nk > 6 and i % nk == 4 then
      t0, t1, t2, t3 = SBOX[t0], SBOX[t1], SBOX[t2], SBOX[t3]
    end
    local b = (i - nk) * 4
    w[i * 4 + 1], w[i * 4 + 2] = bxor(w[b + 1], t0), bxor(w[b + 2], t1)
    w[i * 4 + 3], w[i * 4 + 4] = bxor(w[b + 3], t2), bxor(w[b + 4], t3)
  end
  return { rk = w, nr = nr }
end

-- One block (16 bytes as a 1-indexed table, column-major as FIPS 197 §3.4) -> new table.
local function encrypt_block(ks, input)
  local rk, nr = ks.rk, ks.nr
  local s, t = {}, {}
  for i = 1, 16 do s[i] = bxor(input[i], rk[i]) end
  for round = 1, nr do
    for c = 0, 3 do  -- SubBytes and ShiftRows: row r moves left by r
      for r = 0, 3 do t[c * 4 + r + 1] = SBOX[s[((c + r) % 4) * 4 + r + 1]] end
    end
    if round < nr then  -- MixColumns
      for c = 0, 12, 4 do
        local a0, a1, a2, a3 = t[c + 1], t[c + 2], t[c + 3], t[c + 4]
        local x0, x1, x2, x3 = XT[a0], XT[a1], XT[a2], XT[a3]
        t[c + 1] = bxor(x0, x1, a1, a2, a3)
        t[c + 2] = bxor(a0, x1, x2, a2, a3)
        t[c + 3] = bxor(a0, a1, x2, x3, a3)
        t[c + 4] = bxor(x0, a0, a1, a2, x3)
      end
    end
    local base = round * 16
    for i = 1, 16 do s[i] = bxor(t[i], rk[base + i]) end
  end
  return s
end

-- GF(2^128) product of two 4-word big-endian values (SP 800-38D §6.3, Algorithm 1).
local function gmul(x, y)
  local z1, z2, z3, z4 = 0, 0, 0, 0
  local v1, v2, v3, v4 = y[1], y[2], y[3], y[4]
  for word = 1, 4 do
    local xw = x[word]
    for bit = 31, 0, -1 do
      if band(rshift(xw, bit), 1) ~= 0 then
        z1, z2, z3, z4 = bxor(z1, v1), bxor(z2, v2), bxor(z3, v3), bxor(z4, v4)
      end
      local lsb = band(v4, 1)
      v4 = bor(rshift(v4, 1), lshift(band(v3, 1), 31))
      v3 = bor(rshift(v3, 1), lshift(band(v2, 1), 31))
      v2 = bor(rshift(v2, 1), lshift(band(v1, 1), 31))
      v1 = rshift(v1, 1)
      if lsb ~= 0 then v1 = bxor(v1, 0xE1000000) end
    end
  end
  return { z1, z2, z3, z4 }
end

local function words(bytes, off)  -- 16 bytes of a string from off (1-indexed), zero-padded
  local out = {}
  for w = 0, 3 do
    local v = 0
    for k = 0, 3 do v = v * 256 + (bytes:byte(off + w * 4 + k) or 0) end
    out[w + 1] = v
  end
  return out
end

local function ghash_update(h, acc, data)
  for off = 1, #data, 16 do
    local b = words(data, off)
    acc = gmul({ bxor(acc[1], b[1]), bxor(acc[2], b[2]), bxor(acc[3], b[3]),
                 bxor(acc[4], b[4]) }, h)
  end
  return acc
end

local function counter_block(iv, n)
  local blk = { iv:byte(1, 12) }
  blk[13], blk[14] = band(rshift(n, 24), 0xff), band(rshift(n, 16), 0xff)
  blk[15], blk[16] = band(rshift(n, 8), 0xff), band(n, 0xff)
  return blk
end

local function to_string(t, n)
  return string.char(unpack(t, 1, n or #t))
end

local M = {}

-- Decrypt and authenticate: plaintext string, or nil when the tag does not match (no
-- unauthenticated byte is ever returned). key: 16 or 32 bytes; iv: 12 bytes.
function M.open(key, iv, ciphertext_and_tag, aad)
  if (#key ~= 16 and #key ~= 32) or #iv ~= 12 or #ciphertext_and_tag < 16 then
    return nil
  end
  local ks = expand(key)
  local ct = ciphertext_and_tag:sub(1, -17)
  local tag = ciphertext_and_tag:sub(-16)
  local h = words(to_string(encrypt_block(ks, { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 })), 1)
  local acc = ghash_update(h, { 0, 0, 0, 0 }, aad)
  acc = ghash_update(h, acc, ct)
  local abits, cbits = #aad * 8, #ct * 8
  acc = gmul({ bxor(acc[1], math.floor(abits / 2 ^ 32)), bxor(acc[2], abits % 2 ^ 32),
               bxor(acc[3], math.floor(cbits / 2 ^ 32)), bxor(acc[4], cbits % 2 ^ 32) }, h)
  local ek0 = encrypt_block(ks, counter_block(iv, 1))
  local diff = 0
  for w = 0, 3 do
    for k = 0, 3 do
      local byte = band(rshift(acc[w + 1], 24 - 8 * k), 0xff)
      diff = bor(diff, bxor(byte, ek0[w * 4 + k + 1], tag:byte(w * 4 + k + 1)))
    end
  end
  if diff ~= 0 then return nil end
  local out = {}
  local n = 2
  for off = 1, #ct, 16 do
    local ks_block = encrypt_block(ks, counter_block(iv, n))
    local chunk = {}
    for i = 1, math.min(16, #ct - off + 1) do
      chunk[i] = bxor(ct:byte(off + i - 1), ks_block[i])
    end
    out[#out + 1] = to_string(chunk)
    n = n + 1
  end
  return table.concat(out)
end

return M
