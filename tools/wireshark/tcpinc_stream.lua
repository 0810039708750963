-- The tcpcrypt byte-stream dissector of tcpinc.lua (loaded by it with dofile; returns one
-- function that takes the shared state). RFC 8548: after an ENO handshake that negotiated a
-- tcpcrypt TEP each direction is Init1 (A) or Init2 (B) unless the session was resumed
-- (§3.5), then encryption frames control | clen | ciphertext (§4.2). Every frame is
-- decrypted with the key log's key for its direction and key generation (§3.8), and only
-- shown if the AEAD tag authenticates it (§3.6): a wrong key yields an expert note, never
-- a wrong plaintext.

return function(S)
  local band = bit32.band
  local aesgcm = S.aesgcm

  local proto = Proto("tcpcrypt", "tcpcrypt (RFC 8548)")
  local F = {
    msg = ProtoField.string("tcpcrypt.message", "Message"),
    magic = ProtoField.uint32("tcpcrypt.magic", "Magic", base.HEX),
    message_len = ProtoField.uint32("tcpcrypt.message_len", "message_len"),
    nciphers = ProtoField.uint8("tcpcrypt.nciphers", "nciphers"),
    cipher = ProtoField.uint16("tcpcrypt.cipher", "sym_cipher", base.HEX, S.AEAD_NAMES),
    n_a = ProtoField.bytes("tcpcrypt.n_a", "N_A"),
    n_b = ProtoField.bytes("tcpcrypt.n_b", "N_B"),
    pub = ProtoField.bytes("tcpcrypt.pub", "Public key"),
    ignored = ProtoField.bytes("tcpcrypt.ignored", "Ignored"),
    control = ProtoField.uint8("tcpcrypt.control", "control", base.HEX),
    rekey = ProtoField.uint8("tcpcrypt.rekey", "rekey", base.DEC, nil, 0x01),
    clen = ProtoField.uint16("tcpcrypt.clen", "clen"),
    ciphertext = ProtoField.bytes("tcpcrypt.ciphertext", "Ciphertext"),
    tag = ProtoField.bytes("tcpcrypt.tag", "Tag"),
    offset = ProtoField.uint64("tcpcrypt.offset", "Stream offset (frame ID)"),
    generation = ProtoField.uint32("tcpcrypt.generation", "Key generation"),
    session_id = ProtoField.bytes("tcpcrypt.session_id", "Session ID (from the key log)"),
    flags = ProtoField.uint8("tcpcrypt.flags", "Plaintext flags", base.HEX),
    finp = ProtoField.uint8("tcpcrypt.finp", "FINp", base.DEC, nil, 0x01),
    urgp = ProtoField.uint8("tcpcrypt.urgp", "URGp", base.DEC, nil, 0x02),
    urgent = ProtoField.uint16("tcpcrypt.urgent", "Urgent offset"),
    data = ProtoField.bytes("tcpcrypt.data", "Application data (decrypted)"),
    data_len = ProtoField.uint32("tcpcrypt.data_len", "Application data length"),
  }
  proto.fields = F
  local E = {
    malformed = ProtoExpert.new("tcpcrypt.malformed", "Malformed tcpcrypt message",
                                expert.group.MALFORMED, expert.severity.ERROR),
    nokey = ProtoExpert.new("tcpcrypt.no_key", "No key for this frame",
                            expert.group.DECRYPTION, expert.severity.NOTE),
    badkey = ProtoExpert.new("tcpcrypt.bad_key", "Key log key does not authenticate frame",
                             expert.group.DECRYPTION, expert.severity.NOTE),
    noaead = ProtoExpert.new("tcpcrypt.no_aead", "AEAD not implemented by the dissector",
                             expert.group.UNDECODED, expert.severity.NOTE),
    eno_test = ProtoExpert.new("tcpcrypt.eno_test", "TEST ONLY TEP: bytes are not encrypted",
                               expert.group.SECURITY, expert.severity.WARN),
  }
  proto.experts = { E.malformed, E.nokey, E.badkey, E.noaead, E.eno_test }
  proto.prefs.keylog_file = Pref.string("tcpcrypt key log", "",
                                        "File of TCPCRYPT_TRAFFIC_KEY lines (testbed/keylog.py)")
  proto.prefs.ports = Pref.range("Ports", "443,5000",
                                  "TCP ports of tcpinc-testbed servers", 65535)

  local tls = Dissector.get("tls")
  local data = Dissector.get("data")
  local keys = {}  -- "src>dst" -> list of { gen, aead, key, nr, sid }

  local function unhex(h)
    return (h:gsub("..", function(c) return string.char(tonumber(c, 16)) end))
  end

  local function load_keylog(path)
    keys = {}
    if path == nil or path == "" then return end
    local fh = io.open(path, "r")
    if fh == nil then return end
    for line in fh:lines() do
      local sid, sip, sport, dip, dport, gen, aead, key, nr = line:match(
        "^TCPCRYPT_TRAFFIC_KEY (%x+) (%S+) (%d+) (%S+) (%d+) (%d+) (%x%x%x%x) (%x+) (%x+)%s*$")
      if sid and #key % 2 == 0 and #nr == 24 then
        local id = sip .. ":" .. sport .. ">" .. dip .. ":" .. dport
        keys[id] = keys[id] or {}
        table.insert(keys[id], { gen = tonumber(gen), aead = tonumber(aead, 16),
                                 key = unhex(key), nr = unhex(nr), sid = unhex(sid) })
      end
    end
    fh:close()
  end

  local registered = nil
  local function register_ports()
    local t = DissectorTable.get("tcp.port")
    if registered then t:remove(registered, proto) end
    registered = proto.prefs.ports
    t:add(registered, proto)
  end

  function proto.init()
    for k in pairs(S.conns) do S.conns[k] = nil end
    load_keylog(proto.prefs.keylog_file)
  end

  function proto.prefs_changed()
    register_ports()
  end

  -- Message framing: a whole Init message or frame at the start of s, or nil if incomplete.
  local function be(s, i, n)
    local v = 0
    for k = 0, n - 1 do v = v * 256 + s:byte(i + k) end
    return v
  end

  local function pdu_length(s, pos, at_start)
    local left = #s - pos + 1
    if at_start and left >= 4 then
      local magic = be(s, pos, 4)
      if magic == S.INIT1_MAGIC or magic == S.INIT2_MAGIC then
        if left < S.INIT_HEADER_LEN then return nil end
        local m = be(s, pos + 4, 4)
        if m < S.INIT_HEADER_LEN + 3 then return -1, "Init", "message_len too small" end
        return m, magic == S.INIT1_MAGIC and "Init1" or "Init2"
      end
    end
    if left < S.FRAME_HEADER_LEN then return nil end
    local clen = be(s, pos + 1, 2)
    if clen < 1 + S.TAG_LEN then return -1, "frame", "clen shorter than flags + tag" end
    return S.FRAME_HEADER_LEN + clen, "frame"
  end

  -- First pass: append the segment to its direction and cut whole messages out.
  local function collect(c, pinfo, tvb)
    local src = S.endpoint(pinfo.src, pinfo.src_port)
    local d = c.dirs[src]
    if d == nil then
      d = { buf = "", parsed = 0, gen = 0, broken = false,
            dst = S.endpoint(pinfo.dst, pinfo.dst_port) }
      c.dirs[src] = d
    end
    local seq = S.f_seq()()
    local syn = S.f_syn() and S.f_syn()() or false
    local off = seq - 1 + (syn and 1 or 0)
    local payload = tvb:bytes():raw()
    local seg = { start = off, len = #payload, pdus = {} }
    c.segs[pinfo.number] = seg
    if off > #d.buf then return seg end  -- a gap: the capture lost bytes, stop here
    if off + #payload > #d.buf then d.buf = d.buf .. payload:sub(#d.buf - off + 1) end
    while not d.broken do
      local len, kind, err = pdu_length(d.buf, d.parsed + 1, d.parsed == 0)
      if len == nil or (len > 0 and d.parsed + len > #d.buf) then break end
      local pdu = { start = d.parsed, kind = kind, src = src, dst = d.dst, err = err }
      if len < 0 then
        d.broken = true
        pdu.len = #d.buf - d.parsed
      else
        pdu.len = len
        if kind == "frame" and band(d.buf:byte(d.parsed + 1), 1) == 1 then d.gen = d.gen + 1 end
        pdu.gen = d.gen
      end
      pdu.bytes = d.buf:sub(d.parsed + 1, d.parsed + pdu.len)
      d.parsed = d.parsed + pdu.len
      table.insert(seg.pdus, pdu)
    end
    return seg
  end

  local function frame_nonce(nr, offset)
    local id = {}
    local v = offset
    for i = 12, 5, -1 do id[i] = v % 256; v = math.floor(v / 256) end
    local out = {}
    for i = 1, 12 do out[i] = string.char(bit32.bxor(id[i] or 0, nr:byte(i))) end
    return table.concat(out)
  end

  -- Authenticated plaintext and the key-log entry that opened it, or nil and a reason.
  local function decrypt(pdu)
    local cands = keys[pdu.src .. ">" .. pdu.dst]
    if cands == nil then return nil, "none" end
    local ct, aad = pdu.bytes:sub(4), pdu.bytes:sub(1, 3)
    local unsupported = false
    for _, k in ipairs(cands) do
      if k.gen == pdu.gen then
        if k.aead == 0x0001 or k.aead == 0x0002 then
          local plain = aesgcm.open(k.key, frame_nonce(k.nr, pdu.start), ct, aad)
          if plain then return plain, k end
        else
          unsupported = true
        end
      end
    end
    return nil, unsupported and "aead" or "bad"
  end

  local function show_init(t, tvb, pdu, tep)
    local n = tvb:len()
    t:add(F.magic, tvb(0, 4))
    t:add(F.message_len, tvb(4, 4))
    local pub_len = S.PUB_LEN[tep] or 32
    local pos
    if pdu.kind == "Init1" then
      local k = tvb(8, 1):uint()
      t:add(F.nciphers, tvb(8, 1))
      pos = 9
      for _ = 1, k do
        if pos + 2 > n then break end
        t:add(F.cipher, tvb(pos, 2)); pos = pos + 2
      end
      if pos + 32 + pub_len > n then
        t:add_proto_expert_info(E.malformed, "Init1 shorter than its fields (RFC 8548 §4.1)")
        return
      end
      t:add(F.n_a, tvb(pos, 32))
    else
      t:add(F.cipher, tvb(8, 2))
      pos = 10
      if pos + 32 + pub_len > n then
        t:add_proto_expert_info(E.malformed, "Init2 shorter than its fields (RFC 8548 §4.1)")
        return
      end
      t:add(F.n_b, tvb(pos, 32))
    end
    t:add(F.pub, tvb(pos + 32, pub_len))
    pos = pos + 32 + pub_len
    if pos < n then t:add(F.ignored, tvb(pos, n - pos)) end
  end

  local function show_frame(t, tvb, pdu)
    t:add(F.control, tvb(0, 1)):add(F.rekey, tvb(0, 1))
    t:add(F.clen, tvb(1, 2))
    t:add(F.offset, UInt64.new(pdu.start)):set_generated()
    t:add(F.generation, pdu.gen):set_generated()
    local clen = tvb:len() - 3
    t:add(F.ciphertext, tvb(3, clen - S.TAG_LEN))
    t:add(F.tag, tvb(3 + clen - S.TAG_LEN, S.TAG_LEN))
    local plain, how = decrypt(pdu)
    if plain == nil then
      if how == "none" then
        t:add_proto_expert_info(E.nokey, "No key log line for " .. pdu.src .. " -> " .. pdu.dst
                                .. ": shown encrypted")
      elseif how == "aead" then
        t:add_proto_expert_info(E.noaead, "ChaCha20-Poly1305 frames are shown encrypted")
      else
        t:add_proto_expert_info(E.badkey, "No key log key authenticates this frame: no plaintext")
      end
      return nil
    end
    local ptvb = ByteArray.new(plain, true):tvb("Decrypted tcpcrypt frame")
    local pt = t:add(proto, ptvb(), "Decrypted plaintext")
    pt:add(F.session_id, how.sid):set_generated()
    local flags = ptvb(0, 1)
    pt:add(F.flags, flags)
    pt:add(F.finp, flags)
    pt:add(F.urgp, flags)
    local pos = 1
    if band(flags:uint(), 2) ~= 0 then
      if ptvb:len() < 3 then
        pt:add_proto_expert_info(E.malformed, "URGp set without the urgent offset (§4.2.1)")
        return nil
      end
      pt:add(F.urgent, ptvb(1, 2)); pos = 3
    end
    local n = ptvb:len() - pos
    pt:add(F.data_len, n):set_generated()
    if n > 0 then pt:add(F.data, ptvb(pos, n)) end
    return n, band(flags:uint(), 1) ~= 0
  end

  local function show_pdu(tree, tvb, seg, pdu, tep)
    local rel = pdu.start - seg.start
    local ptvb
    if rel >= 0 and rel + pdu.len <= seg.len then
      ptvb = tvb(rel, pdu.len):tvb()
    else
      ptvb = ByteArray.new(pdu.bytes, true):tvb("Reassembled tcpcrypt message")
    end
    local t = tree:add(proto, ptvb(), "tcpcrypt " .. pdu.kind)
    t:add(F.msg, pdu.kind):set_generated()
    if pdu.err then
      t:add_proto_expert_info(E.malformed, pdu.err .. " (RFC 8548 §4); rest of stream undecoded")
      return pdu.kind .. " [malformed]"
    end
    if pdu.kind ~= "frame" then
      show_init(t, ptvb, pdu, tep)
      return pdu.kind
    end
    local n, fin = show_frame(t, ptvb, pdu)
    if n == nil then return "Frame (encrypted)" end
    return string.format("Frame, %d bytes%s", n, fin and ", FINp" or "")
  end

  local function dissect_tcpcrypt(tvb, pinfo, tree, c, tep)
    c.segs = c.segs or {}
    local seg = c.segs[pinfo.number]
    if seg == nil then seg = collect(c, pinfo, tvb) end  -- once per frame after init
    pinfo.cols.protocol = "tcpcrypt"
    local names = {}
    if seg then
      for _, pdu in ipairs(seg.pdus) do
        table.insert(names, show_pdu(tree, tvb, seg, pdu, tep))
      end
    end
    if #names == 0 then
      tree:add(proto, tvb(), "tcpcrypt: segment of a message")
      pinfo.cols.info = "tcpcrypt segment"
    else
      pinfo.cols.info = "tcpcrypt " .. table.concat(names, "; ")
    end
    return tvb:len()
  end

  function proto.dissector(tvb, pinfo, tree)
    local c = S.conn_of(pinfo)
    local tep = c and c.negotiated
    if tep and S.PUB_LEN[tep] then return dissect_tcpcrypt(tvb, pinfo, tree, c, tep) end
    if tep == 0x20 then
      tree:add(proto, tvb(), "ENO test-only TEP 0x20"):add_proto_expert_info(E.eno_test)
      return data:call(tvb, pinfo, tree)
    end
    if c and c.tls == nil then
      -- TCP-use-TLS, or TLS without ENO: a TLS record header at the stream's first byte.
      local b0 = tvb:len() >= 2 and tvb(0, 1):uint() or 0
      c.tls = tep == 0x30 or (b0 >= 0x14 and b0 <= 0x17 and tvb(1, 1):uint() == 0x03)
    end
    if c and c.tls then return tls:call(tvb, pinfo, tree) end
    return data:call(tvb, pinfo, tree)
  end

  register_ports()
end
