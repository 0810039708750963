-- tcpinc.lua: Wireshark/tshark dissectors for TCP-ENO (RFC 8547) and tcpcrypt (RFC 8548),
-- from the tcpinc-testbed project. Load with `tshark -X lua_script:tools/wireshark/tcpinc.lua`
-- or copy this file and tcpinc_aesgcm.lua into the personal Lua plugin folder.
--
-- * "tcpeno": the ENO option, TCP option kind 69 and the pre-RFC experimental kind 253 with
--   ExID 0x454E (RFC 8547 §11, RFC 6994): SYN-form suboptions (global suboption with the b and
--   a bits, length bytes, TEP identifiers by name with their v bit and data), non-SYN-form
--   contents, the negotiated TEP (§4.5); ill-formed options raise expert info (§4.4).
-- * "tcpcrypt": the byte stream on the testbed's server ports (preference tcpcrypt.ports,
--   default 443,5000) after an ENO handshake that negotiated a tcpcrypt TEP: Init1 and Init2
--   (§4.1), then encryption frames (§4.2), decrypted when the key log (preference
--   tcpcrypt.keylog_file, format in testbed/keylog.py) holds a key that authenticates them.
--   Streams that negotiated TCP-use-TLS (TEP 0x30) or carry TLS without ENO go to Wireshark's
--   TLS dissector (decrypted with -o tls.keylog_file:FILE); anything else is shown as data.

local aesgcm
do
  local src = debug.getinfo(1, "S").source
  local dir = src:match("^@(.*[/\\])") or "./"
  aesgcm = dofile(dir .. "tcpinc_aesgcm.lua")
end

local band = bit32.band

local TEP_NAMES = {
  [0x20] = "experimental use (testbed eno-test TEP, TEST ONLY, no encryption)",
  [0x21] = "TCPCRYPT_ECDHE_P256", [0x22] = "TCPCRYPT_ECDHE_P521",
  [0x23] = "TCPCRYPT_ECDHE_Curve25519", [0x24] = "TCPCRYPT_ECDHE_Curve448",
  [0x30] = "TCP-use-TLS (testbed, non-standard id)",
}
local TCPCRYPT_PUB_LEN = { [0x21] = 35, [0x22] = 69, [0x23] = 32, [0x24] = 56 }  -- §5
local AEAD_NAMES = {
  [0x0001] = "AEAD_AES_128_GCM", [0x0002] = "AEAD_AES_256_GCM",
  [0x0010] = "AEAD_CHACHA20_POLY1305",
}
local INIT1_MAGIC, INIT2_MAGIC = 0x15101A0E, 0x097105E0  -- RFC 8548 §4.3 Table 1
local ENO_EXID = 0x454E
local TAG_LEN, FRAME_HEADER_LEN, INIT_HEADER_LEN = 16, 3, 8

-------------------------------------------------------------------------------------------
-- TCP-ENO option
-------------------------------------------------------------------------------------------
local eno = Proto("tcpeno", "TCP-ENO option (RFC 8547)")
local EF = {
  kind = ProtoField.uint8("tcpeno.kind", "Kind"),
  len = ProtoField.uint8("tcpeno.len", "Length"),
  exid = ProtoField.uint16("tcpeno.exid", "ExID", base.HEX),
  form = ProtoField.string("tcpeno.form", "Form"),
  global = ProtoField.uint8("tcpeno.global", "Global suboption", base.HEX),
  b = ProtoField.uint8("tcpeno.b", "b (passive role)", base.DEC, nil, 0x01),
  a = ProtoField.uint8("tcpeno.a", "a (application-aware)", base.DEC, nil, 0x02),
  z = ProtoField.uint8("tcpeno.z", "z (reserved)", base.HEX, nil, 0x1c),
  suboption = ProtoField.bytes("tcpeno.suboption", "TEP suboption"),
  length_byte = ProtoField.uint8("tcpeno.length_byte", "Length byte", base.HEX),
  tep = ProtoField.uint8("tcpeno.tep", "TEP identifier", base.HEX, TEP_NAMES, 0x7f),
  v = ProtoField.uint8("tcpeno.v", "v (suboption data follows)", base.DEC, nil, 0x80),
  datalen = ProtoField.uint8("tcpeno.datalen", "Suboption data length"),
  data = ProtoField.bytes("tcpeno.subdata", "Suboption data"),
  resume_half = ProtoField.bytes("tcpeno.resume_half", "Resumption identifier half"),
  resume_nonce = ProtoField.bytes("tcpeno.resume_nonce", "Resumption nonce"),
  contents = ProtoField.bytes("tcpeno.contents", "Non-SYN-form contents"),
  negotiated = ProtoField.uint8("tcpeno.negotiated_tep", "Negotiated TEP", base.HEX, TEP_NAMES),
  role = ProtoField.string("tcpeno.role", "ENO role of the sender"),
}
eno.fields = EF
local EE = {
  ill = ProtoExpert.new("tcpeno.ill_formed", "Ill-formed ENO option",
                        expert.group.MALFORMED, expert.severity.ERROR),
  ignored = ProtoExpert.new("tcpeno.ignored", "Suboption ignored by receivers",
                            expert.group.PROTOCOL, expert.severity.NOTE),
  multiple = ProtoExpert.new("tcpeno.multiple", "More than one ENO option in a SYN",
                             expert.group.PROTOCOL, expert.severity.WARN),
  nonempty = ProtoExpert.new("tcpeno.nonempty", "Non-SYN-form option with contents",
                             expert.group.PROTOCOL, expert.severity.NOTE),
}
eno.experts = { EE.ill, EE.ignored, EE.multiple, EE.nonempty }

local f_syn = Field.new("tcp.flags.syn")
local f_ack = Field.new("tcp.flags.ack")
local f_stream = Field.new("tcp.stream")
local f_seq = Field.new("tcp.seq")

-- Per TCP stream (tcp.stream): what the two SYN-form options offered, and the result.
local conns = {}

local function endpoint(addr, port) return tostring(addr) .. ":" .. tostring(port) end

local function conn_of(pinfo)
  local stream = f_stream()
  if stream == nil then return nil end
  local id = stream()
  local c = conns[id]
  if c == nil then
    c = { id = id, dirs = {}, frames = {} }
    conns[id] = c
  end
  return c
end

-- One TEP suboption: tree item and parsed record. off is the suboption byte's offset.
local function add_tep(tree, tvb, lenbyte_off, off, data_off, data_len)
  local start = lenbyte_off or off
  local item = tree:add(EF.suboption, tvb(start, data_off + data_len - start))
  local byte = tvb(off, 1):uint()
  local glt = band(byte, 0x7f)
  item:set_text(string.format("TEP 0x%02x %s%s", glt, TEP_NAMES[glt] or "(unassigned)",
                              byte >= 0x80 and string.format(", v = 1, %d bytes of data",
                                                             data_len) or ", v = 0"))
  if lenbyte_off then
    item:add(EF.length_byte, tvb(lenbyte_off, 1))
  end
  item:add(EF.tep, tvb(off, 1))
  item:add(EF.v, tvb(off, 1))
  local rec = { glt = glt, v = byte >= 0x80, data = "" }
  if data_len > 0 then
    item:add(EF.datalen, tvb(start, 1), data_len):set_generated()
    item:add(EF.data, tvb(data_off, data_len))
    rec.data = tvb(data_off, data_len):bytes():raw()
    if TCPCRYPT_PUB_LEN[glt] and data_len >= 9 and data_len <= 17 then
      item:add(EF.resume_half, tvb(data_off, 9))  -- RFC 8548 §3.5, Figs. 2-3
      if data_len > 9 then item:add(EF.resume_nonce, tvb(data_off + 9, data_len - 9)) end
    end
  end
  return rec
end

local function add_global(tree, tvb, pinfo, off, seen)
  local item = tree:add(EF.global, tvb(off, 1))
  if seen then
    item:add_proto_expert_info(EE.ignored, "Second global suboption, ignored (RFC 8547 §4.2)")
    return nil
  end
  item:add(EF.b, tvb(off, 1))
  item:add(EF.a, tvb(off, 1))
  item:add(EF.z, tvb(off, 1))
  return tvb(off, 1):uint()
end

-- SYN-form contents (RFC 8547 §4.1, §4.4): returns { global, teps, valid }.
local function parse_syn_form(tree, tvb, pinfo, first)
  local n = tvb:len()
  local parsed = { global = nil, teps = {}, valid = true }
  local i = first
  local function ill(item, text)
    parsed.valid = false
    item:add_proto_expert_info(EE.ill, text .. "; the receiver ignores the option (RFC 8547 §4.4)")
  end
  while i < n do
    local byte = tvb(i, 1):uint()
    local glt = band(byte, 0x7f)
    if glt < 0x20 and byte < 0x80 then
      local g = add_global(tree, tvb, pinfo, i, parsed.global ~= nil)
      if parsed.global == nil then parsed.global = g end
      i = i + 1
    elseif glt < 0x20 then  -- length byte 100nnnnn
      local dlen = band(byte, 0x1f) + 1
      if i + 1 >= n then
        ill(tree:add(EF.length_byte, tvb(i, 1)), "Length byte ends the option")
        break
      end
      local nxt = tvb(i + 1, 1):uint()
      if nxt < 0xa0 then
        ill(tree:add(EF.length_byte, tvb(i, 2)),
            string.format("Length byte followed by 0x%02x (needs a TEP id with v = 1)", nxt))
        break
      end
      if i + 2 + dlen > n then
        ill(tree:add(EF.length_byte, tvb(i, n - i)),
            string.format("Length byte announces %d bytes, %d left", dlen, n - i - 2))
        break
      end
      table.insert(parsed.teps, add_tep(tree, tvb, i, i + 1, i + 2, dlen))
      i = i + 2 + dlen
    elseif byte < 0x80 then
      table.insert(parsed.teps, add_tep(tree, tvb, nil, i, i + 1, 0))
      i = i + 1
    else  -- v = 1 without a length byte: data to the end of the option (§4.4)
      table.insert(parsed.teps, add_tep(tree, tvb, nil, i, i + 1, n - i - 1))
      i = n
    end
  end
  return parsed
end

-- RFC 8547 §4.5: the last TEP in B's SYN-form option that A offered as well.
local function negotiate(c)
  if not (c.a_opt and c.b_opt and c.a_opt.valid and c.b_opt.valid) then return nil end
  local offered = {}
  for _, t in ipairs(c.a_opt.teps) do offered[t.glt] = true end
  local chosen = nil
  for _, t in ipairs(c.b_opt.teps) do
    if offered[t.glt] then chosen = t.glt end
  end
  return chosen
end

local function note_syn_form(c, pinfo, parsed, tree)
  local b = parsed.global and band(parsed.global, 1) or 0
  local ack = f_ack() and f_ack()() or false
  -- State changes once per frame (the first time it is dissected after init), so later
  -- random-access dissections (the GUI) and tshark's second pass (-2) see the same result.
  if c.frames[pinfo.number] == nil then
    if not ack then
      c.a_opt, c.b_opt, c.negotiated, c.a_end = nil, nil, nil, nil
    end
    if b == 0 then
      c.a_opt, c.a_end = parsed, endpoint(pinfo.src, pinfo.src_port)
    else
      c.b_opt = parsed
    end
    c.negotiated = negotiate(c)
    c.frames[pinfo.number] = c.negotiated or false
  end
  tree:add(EF.role, b == 0 and "A" or "B"):set_generated()
  local chosen = c.frames[pinfo.number]
  if chosen then tree:add(EF.negotiated, chosen):set_generated() end
end

-- ENO options in this segment's whole options block (RFC 8547 §4.1: a SYN with more than
-- one is treated as if it had none). Read from the block, so re-dissection counts the same.
local f_options = Field.new("tcp.options")
local function count_eno_options()
  local field = f_options()
  if field == nil then return 1 end
  local block = field.range
  local i, n, count = 0, block:len(), 0
  while i < n do
    local kind = block(i, 1):uint()
    if kind == 0 then break end
    if kind == 1 then
      i = i + 1
    else
      if i + 1 >= n then break end
      local len = block(i + 1, 1):uint()
      if len < 2 or i + len > n then break end
      if kind == 69 or (kind == 253 and len >= 4 and block(i + 2, 2):uint() == ENO_EXID) then
        count = count + 1
      end
      i = i + len
    end
  end
  return math.max(count, 1)
end

local function dissect_eno(tvb, pinfo, tree, first)
  local item = tree:add(eno, tvb())
  item:add(EF.kind, tvb(0, 1))
  item:add(EF.len, tvb(1, 1))
  if first == 4 then item:add(EF.exid, tvb(2, 2)) end
  local syn = f_syn() and f_syn()() or false
  local count = count_eno_options()
  if syn then
    item:add(EF.form, "SYN-form"):set_generated()
    if count > 1 then
      item:add_proto_expert_info(EE.multiple, "More than one ENO option in a SYN: the "
                                 .. "receiver acts as if there were none (RFC 8547 §4.1)")
    end
    local parsed = parse_syn_form(item, tvb, pinfo, first)
    local c = conn_of(pinfo)
    if c and count == 1 then note_syn_form(c, pinfo, parsed, item) end  -- else: ignored
    item:append_text(string.format(": SYN-form, %d TEP suboption(s)%s", #parsed.teps,
                                   parsed.valid and "" or " [ill-formed]"))
    local ids = {}
    for _, t in ipairs(parsed.teps) do
      table.insert(ids, string.format("%s0x%02x", t.v and "v" or "", t.glt))
    end
    pinfo.cols.info:append(" ENO=" .. (parsed.valid and "" or "ILL-FORMED:")
                           .. (#ids > 0 and table.concat(ids, ",") or "-"))
  else
    item:add(EF.form, "non-SYN-form"):set_generated()
    if tvb:len() > first then
      item:add(EF.contents, tvb(first, tvb:len() - first))
        :add_proto_expert_info(EE.nonempty, "Contents are ignored by TCP-ENO (RFC 8547 §4.1)")
    end
    item:append_text(": non-SYN-form")
    pinfo.cols.info:append(" ENO")
  end
  return tvb:len()
end

local option_table = DissectorTable.get("tcp.option")
local experimental = option_table:get_dissector(253)

function eno.dissector(tvb, pinfo, tree)
  if tvb:len() < 2 then return 0 end
  local kind = tvb(0, 1):uint()
  if kind == 69 then return dissect_eno(tvb, pinfo, tree, 2) end
  if tvb:len() >= 4 and tvb(2, 2):uint() == ENO_EXID then
    return dissect_eno(tvb, pinfo, tree, 4)
  end
  if experimental then return experimental:call(tvb, pinfo, tree) end
  return 0
end

option_table:add(69, eno)
option_table:add(253, eno)

-------------------------------------------------------------------------------------------
-- tcpcrypt byte stream
-------------------------------------------------------------------------------------------
dofile((debug.getinfo(1, "S").source:match("^@(.*[/\\])") or "./") .. "tcpinc_stream.lua")(
  { conns = conns, conn_of = conn_of, endpoint = endpoint, f_seq = f_seq, f_syn = f_syn,
    aesgcm = aesgcm, TEP_NAMES = TEP_NAMES, AEAD_NAMES = AEAD_NAMES,
    PUB_LEN = TCPCRYPT_PUB_LEN, INIT1_MAGIC = INIT1_MAGIC, INIT2_MAGIC = INIT2_MAGIC,
    TAG_LEN = TAG_LEN, FRAME_HEADER_LEN = FRAME_HEADER_LEN,
    INIT_HEADER_LEN = INIT_HEADER_LEN })
