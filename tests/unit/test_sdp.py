"""SDP parsing and RFC 3264 offer/answer."""

from __future__ import annotations

import pytest

from callbox.server.sip.sdp import (
    MediaDescription,
    NegotiatedMedia,
    NoCommonCodec,
    SdpError,
    SessionDescription,
    UnsupportedContentType,
    accept_answer,
    answer_offer,
    make_offer,
    parse_sdp,
    sdp_body,
)

SIPP_OFFER = (
    b"v=0\r\n"
    b"o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 127.0.0.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 6002 RTP/AVP 0 96\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:96 telephone-event/8000\r\n"
    b"a=fmtp:96 0-16\r\n"
    b"a=ptime:20\r\n"
)

BARESIP_OFFER = (
    b"v=0\r\n"
    b"o=- 1402618387 2912862513 IN IP4 192.168.1.20\r\n"
    b"s=-\r\n"
    b"c=IN IP4 192.168.1.20\r\n"
    b"t=0 0\r\n"
    b"m=audio 10000 RTP/AVP 96 9 0 8 101\r\n"
    b"b=AS:128\r\n"
    b"a=rtpmap:96 opus/48000/2\r\n"
    b"a=fmtp:96 stereo=1;sprop-stereo=1\r\n"
    b"a=rtpmap:9 G722/8000\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"a=rtpmap:8 PCMA/8000\r\n"
    b"a=rtpmap:101 telephone-event/8000\r\n"
    b"a=fmtp:101 0-15\r\n"
    b"a=rtcp-mux\r\n"
    b"a=label:1\r\n"
    b"a=sendrecv\r\n"
)


def offer_with(media: str, *, session: str = "", connection: str = "127.0.0.1") -> bytes:
    return (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\n"
        f"c=IN IP4 {connection}\r\nt=0 0\r\n{session}{media}"
    ).encode()


def answer(data: bytes, **kwargs: object) -> tuple[SessionDescription, NegotiatedMedia]:
    options: dict = {
        "local_host": "192.0.2.10",
        "local_port": 20000,
        "session_id": 42,
        "session_version": 1,
    }
    options.update(kwargs)
    return answer_offer(parse_sdp(data), **options)


def test_parse_sipp_offer() -> None:
    sdp = parse_sdp(SIPP_OFFER)
    assert sdp.origin.username == "user1"
    assert sdp.origin.session_id == 53655765
    assert sdp.origin.session_version == 2353687637
    assert sdp.origin.address == "127.0.0.1"
    assert sdp.session_name == "-"
    assert sdp.connection == "127.0.0.1"
    assert len(sdp.media) == 1
    audio = sdp.media[0]
    assert (audio.media, audio.port, audio.proto) == ("audio", 6002, "RTP/AVP")
    assert audio.formats == ["0", "96"]
    assert audio.rtpmap == {0: ("PCMU", 8000, None), 96: ("telephone-event", 8000, None)}
    assert audio.fmtp == {96: "0-16"}
    assert audio.ptime == 20
    assert audio.direction is None
    assert sdp.media_direction(audio) == "sendrecv"


def test_parse_baresip_offer_keeps_other_attributes() -> None:
    sdp = parse_sdp(BARESIP_OFFER.decode())
    audio = sdp.media[0]
    assert audio.rtpmap[96] == ("opus", 48000, 2)
    assert audio.fmtp[96] == "stereo=1;sprop-stereo=1"
    assert audio.attributes == [("rtcp-mux", None), ("label", "1")]
    assert audio.direction == "sendrecv"
    again = parse_sdp(sdp.serialize())
    assert again == sdp


def test_answer_sipp_offer() -> None:
    ans, media = answer(SIPP_OFFER)
    assert media == NegotiatedMedia(
        remote_host="127.0.0.1",
        remote_port=6002,
        payload_type=0,
        codec="PCMU",
        dtmf_payload_type=96,
        ptime=20,
        local_direction="sendrecv",
    )
    assert ans.serialize() == (
        b"v=0\r\n"
        b"o=callbox 42 1 IN IP4 192.0.2.10\r\n"
        b"s=callbox\r\n"
        b"c=IN IP4 192.0.2.10\r\n"
        b"t=0 0\r\n"
        b"m=audio 20000 RTP/AVP 0 96\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:96 telephone-event/8000\r\n"
        b"a=fmtp:96 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )


def test_answer_baresip_offer_picks_first_supported_in_offer_order() -> None:
    ans, media = answer(BARESIP_OFFER)
    assert (media.payload_type, media.codec, media.dtmf_payload_type) == (0, "PCMU", 101)
    assert (media.remote_host, media.remote_port) == ("192.168.1.20", 10000)
    audio = ans.media[0]
    assert audio.formats == ["0", "101"]
    assert audio.fmtp == {101: "0-15"}
    assert audio.proto == "RTP/AVP"


def test_answer_prefers_offer_order_pcma_first() -> None:
    _, media = answer(offer_with("m=audio 4000 RTP/AVP 8 0\r\n"))
    assert (media.payload_type, media.codec) == (8, "PCMA")
    assert media.dtmf_payload_type is None


def test_answer_restricted_codecs() -> None:
    _, media = answer(offer_with("m=audio 4000 RTP/AVP 0 8\r\n"), codecs=("PCMA",))
    assert media.codec == "PCMA"
    with pytest.raises(NoCommonCodec):
        answer(offer_with("m=audio 4000 RTP/AVP 0\r\n"), codecs=("pcma",))


def test_static_payload_types_without_rtpmap_and_no_dtmf() -> None:
    ans, media = answer(offer_with("m=audio 4000 RTP/AVP 8\r\n"))
    assert (media.payload_type, media.codec, media.dtmf_payload_type) == (8, "PCMA", None)
    assert ans.media[0].formats == ["8"]
    assert ans.media[0].rtpmap == {8: ("PCMA", 8000, None)}
    assert b"a=rtpmap:8 PCMA/8000\r\n" in ans.serialize()


def test_dynamic_payload_type_mapped_by_name() -> None:
    media_line = "m=audio 4000 RTP/AVP 110 0\r\na=rtpmap:110 pcmu/8000\r\n"
    ans, media = answer(offer_with(media_line))
    assert (media.payload_type, media.codec) == (110, "PCMU")
    assert ans.media[0].rtpmap[110] == ("PCMU", 8000, None)


def test_wrong_clock_rate_or_channels_not_accepted() -> None:
    media_line = (
        "m=audio 4000 RTP/AVP 110 111 8\r\na=rtpmap:110 PCMU/16000\r\na=rtpmap:111 PCMU/8000/2\r\n"
    )
    _, media = answer(offer_with(media_line))
    assert media.payload_type == 8


def test_telephone_event_default_fmtp_and_rate() -> None:
    media_line = (
        "m=audio 4000 RTP/AVP 0 100 101\r\n"
        "a=rtpmap:100 telephone-event/48000\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    ans, media = answer(offer_with(media_line))
    assert media.dtmf_payload_type == 101
    assert ans.media[0].fmtp == {101: "0-16"}


def test_offer_ptime_is_reported_but_answer_asks_for_20() -> None:
    ans, media = answer(offer_with("m=audio 4000 RTP/AVP 0\r\na=ptime:30\r\n"))
    assert media.ptime == 30
    assert ans.media[0].ptime == 20


def test_g729_only_offer() -> None:
    with pytest.raises(NoCommonCodec) as info:
        answer(offer_with("m=audio 4000 RTP/AVP 18 3\r\na=rtpmap:18 G729/8000\r\n"))
    message = str(info.value)
    assert "G729/8000" in message
    assert "GSM/8000" in message
    assert "PCMU, PCMA" in message
    assert isinstance(info.value, SdpError)


@pytest.mark.parametrize(
    ("direction", "expected"),
    [
        ("sendonly", "recvonly"),
        ("recvonly", "sendonly"),
        ("inactive", "inactive"),
        ("sendrecv", "sendrecv"),
    ],
)
def test_direction(direction: str, expected: str) -> None:
    ans, media = answer(offer_with(f"m=audio 4000 RTP/AVP 0\r\na={direction}\r\n"))
    assert media.local_direction == expected
    assert ans.media[0].direction == expected
    # Session-level direction applies too.
    _, media = answer(offer_with("m=audio 4000 RTP/AVP 0\r\n", session=f"a={direction}\r\n"))
    assert media.local_direction == expected


def test_media_level_direction_overrides_session_level() -> None:
    data = offer_with("m=audio 4000 RTP/AVP 0\r\na=sendrecv\r\n", session="a=inactive\r\n")
    assert answer(data)[1].local_direction == "sendrecv"


def test_old_style_hold() -> None:
    _, media = answer(offer_with("m=audio 4000 RTP/AVP 0\r\n", connection="0.0.0.0"))
    assert media.local_direction == "recvonly"
    assert media.remote_host == "0.0.0.0"
    data = offer_with("m=audio 4000 RTP/AVP 0\r\na=recvonly\r\n", connection="0.0.0.0")
    assert answer(data)[1].local_direction == "inactive"


def test_two_media_lines_video_rejected() -> None:
    media_lines = (
        "m=video 5000 RTP/AVP 97\r\na=rtpmap:97 H264/90000\r\n"
        "m=audio 4000 RTP/AVP 0 101\r\nc=IN IP4 10.0.0.7\r\na=rtpmap:101 telephone-event/8000\r\n"
    )
    ans, media = answer(offer_with(media_lines))
    assert [(m.media, m.port) for m in ans.media] == [("video", 0), ("audio", 20000)]
    assert ans.media[0].formats == ["97"]
    assert media.remote_host == "10.0.0.7"  # media-level c= wins
    reparsed = parse_sdp(ans.serialize())
    assert [m.port for m in reparsed.media] == [0, 20000]


def test_second_audio_line_rejected() -> None:
    ans, _ = answer(offer_with("m=audio 4000 RTP/AVP 0\r\nm=audio 4002 RTP/AVP 8\r\n"))
    assert [m.port for m in ans.media] == [20000, 0]


def test_srtp_and_disabled_lines_are_skipped() -> None:
    media_lines = "m=audio 4000 RTP/SAVP 0\r\nm=audio 0 RTP/AVP 0\r\nm=audio 4004 RTP/AVPF 8\r\n"
    ans, media = answer(offer_with(media_lines))
    assert [m.port for m in ans.media] == [0, 0, 20000]
    assert ans.media[2].proto == "RTP/AVPF"
    assert media.remote_port == 4004


def test_srtp_only_offer_rejected() -> None:
    with pytest.raises(NoCommonCodec, match="RTP/SAVP"):
        answer(offer_with("m=audio 4000 RTP/SAVP 0\r\n"))


def test_no_audio_at_all() -> None:
    with pytest.raises(NoCommonCodec, match="no audio"):
        answer(offer_with("m=video 5000 RTP/AVP 97\r\n"))


def test_no_connection_address() -> None:
    data = b"v=0\r\no=- 1 1 IN IP4 h\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n"
    with pytest.raises(SdpError, match="connection"):
        answer(data)


def test_ipv6_answer() -> None:
    ans, _ = answer(offer_with("m=audio 4000 RTP/AVP 0\r\n"), local_host="2001:db8::10")
    text = ans.serialize()
    assert b"o=callbox 42 1 IN IP6 2001:db8::10\r\n" in text
    assert b"c=IN IP6 2001:db8::10\r\n" in text


# -- our offers ----------------------------------------------------------------------------------


def test_make_offer() -> None:
    offer = make_offer(local_host="192.0.2.1", local_port=30000, session_id=7, session_version=8)
    assert offer.serialize() == (
        b"v=0\r\n"
        b"o=callbox 7 8 IN IP4 192.0.2.1\r\n"
        b"s=callbox\r\n"
        b"c=IN IP4 192.0.2.1\r\n"
        b"t=0 0\r\n"
        b"m=audio 30000 RTP/AVP 0 8 101\r\n"
        b"a=rtpmap:0 PCMU/8000\r\n"
        b"a=rtpmap:8 PCMA/8000\r\n"
        b"a=rtpmap:101 telephone-event/8000\r\n"
        b"a=fmtp:101 0-16\r\n"
        b"a=ptime:20\r\n"
        b"a=sendrecv\r\n"
    )
    with pytest.raises(SdpError):
        make_offer(local_host="h", local_port=1, session_id=1, session_version=1, codecs=("G729",))
    with pytest.raises(SdpError):
        make_offer(local_host="h", local_port=1, session_id=1, session_version=1, direction="x")


def test_offer_answer_between_our_own_uac_and_uas() -> None:
    offer = make_offer(
        local_host="192.0.2.1",
        local_port=30000,
        session_id=7,
        session_version=8,
        codecs=("PCMA", "PCMU"),
    )
    their_answer, uas_media = answer(offer.serialize())
    assert (uas_media.codec, uas_media.payload_type, uas_media.dtmf_payload_type) == (
        "PCMA",
        8,
        101,
    )
    uac_media = accept_answer(offer, parse_sdp(their_answer.serialize()))
    assert uac_media == NegotiatedMedia("192.0.2.10", 20000, 8, "PCMA", 101, 20, "sendrecv")


def _our_offer(direction: str = "sendrecv") -> SessionDescription:
    return make_offer(
        local_host="192.0.2.1",
        local_port=30000,
        session_id=1,
        session_version=1,
        direction=direction,
    )


def _their_answer(media: str, connection: str = "198.51.100.2") -> SessionDescription:
    return parse_sdp(offer_with(media, connection=connection))


def test_accept_answer_codec_and_direction() -> None:
    result = accept_answer(_our_offer(), _their_answer("m=audio 7000 RTP/AVP 8\r\na=recvonly\r\n"))
    assert (result.codec, result.payload_type, result.dtmf_payload_type) == ("PCMA", 8, None)
    assert result.local_direction == "sendonly"
    assert (result.remote_host, result.remote_port) == ("198.51.100.2", 7000)
    result = accept_answer(_our_offer("recvonly"), _their_answer("m=audio 7000 RTP/AVP 0\r\n"))
    assert result.local_direction == "recvonly"
    result = accept_answer(
        _our_offer(), _their_answer("m=audio 7000 RTP/AVP 0\r\n", connection="0.0.0.0")
    )
    assert result.local_direction == "recvonly"


def test_accept_answer_rejections() -> None:
    with pytest.raises(NoCommonCodec, match="rejected"):
        accept_answer(_our_offer(), _their_answer("m=audio 0 RTP/AVP 0\r\n"))
    with pytest.raises(NoCommonCodec):
        accept_answer(_our_offer(), _their_answer("m=audio 7000 RTP/AVP 18\r\n"))
    with pytest.raises(SdpError, match="media lines"):
        accept_answer(
            _our_offer(), _their_answer("m=audio 7000 RTP/AVP 0\r\nm=video 0 RTP/AVP 31\r\n")
        )


# -- parse errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\r\n\r\n",
        b"garbage",
        b"o=- 1 1 IN IP4 h\r\nv=0\r\n",
        b"v=1\r\no=- 1 1 IN IP4 h\r\n",
        b"v=0\r\ns=-\r\n",
        b"v=0\r\nv=0\r\no=- 1 1 IN IP4 h\r\n",
        b"v=0\r\no=- x 1 IN IP4 h\r\n",
        b"v=0\r\no=- 1 1 IN IP4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nc=XX IP4 1.2.3.4\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio x RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 70000 RTP/AVP 0\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nm=audio 4000 RTP/AVP\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\na=\r\n",
        b"v=0\r\no=- 1 1 IN IP4 h\r\nbogus line\r\n",
    ],
)
def test_parse_errors(data: bytes) -> None:
    with pytest.raises(SdpError):
        parse_sdp(data)


@pytest.mark.parametrize(
    "line",
    ["a=rtpmap:x PCMU/8000", "a=rtpmap:0 PCMU", "a=fmtp:abc", "a=ptime:fast", "c=IN IP4", "junk"],
)
def test_a_malformed_line_marks_only_its_stream_unusable(line: str) -> None:
    data = offer_with(f"m=audio 4000 RTP/AVP 0\r\n{line}\r\na=sendrecv\r\n")
    sdp = parse_sdp(data)
    assert sdp.media[0].error is not None and sdp.media[0].direction is None
    with pytest.raises(NoCommonCodec):
        answer_offer(sdp, local_host="192.0.2.10", local_port=1, session_id=1, session_version=1)


def test_a_malformed_unused_stream_is_rejected_alone() -> None:
    data = offer_with("m=audio 4000 RTP/AVP 0\r\n"
                      "m=video 5000 RTP/AVP 96\r\na=rtpmap:96 H264\r\n")
    ans, negotiated = answer(data)
    assert [m.port for m in ans.media] == [20000, 0]
    assert ans.media[1].media == "video"
    assert negotiated.remote_port == 4000


@pytest.mark.parametrize("address", ["224.2.1.1", "ff0e::1"])
def test_multicast_connection_is_refused(address: str) -> None:
    with pytest.raises(SdpError, match="multicast"):
        answer(offer_with("m=audio 4000 RTP/AVP 0\r\n", connection=address))


def test_host_name_connection_is_left_to_the_caller_to_resolve() -> None:
    _, negotiated = answer(offer_with("m=audio 4000 RTP/AVP 0\r\n", connection="media.example"))
    assert negotiated.remote_host == "media.example"


def test_maxptime_below_our_packet_time_is_refused() -> None:
    with pytest.raises(SdpError, match="maxptime 10"):
        answer(offer_with("m=audio 4000 RTP/AVP 0\r\na=maxptime:10\r\n"))
    ans, _ = answer(offer_with("m=audio 4000 RTP/AVP 0\r\na=maxptime:40\r\n"))
    assert ans.media[0].ptime == 20


def test_sdp_body_takes_the_sdp_part_of_multipart_mixed() -> None:
    sdp = offer_with("m=audio 4000 RTP/AVP 0\r\n")
    body = (b"--xyz\r\nContent-Type: application/isup\r\n\r\n\x01\x02\r\n"
            b"--xyz\r\nContent-Type: application/sdp\r\n\r\n" + sdp + b"\r\n--xyz--\r\n")
    extracted = sdp_body(body, 'multipart/mixed; boundary="xyz"')
    assert parse_sdp(extracted).media[0].port == 4000
    assert sdp_body(sdp, "application/SDP") == sdp
    assert sdp_body(sdp, None) == sdp


@pytest.mark.parametrize("content_type", ["text/plain", "multipart/mixed; boundary=q"])
def test_sdp_body_refuses_other_content(content_type: str) -> None:
    with pytest.raises(UnsupportedContentType):
        sdp_body(b"--q\r\nContent-Type: text/plain\r\n\r\nhi\r\n--q--\r\n", content_type)


def test_parse_is_lenient_about_line_endings_and_unknown_lines() -> None:
    data = SIPP_OFFER.replace(b"\r\n", b"\n").replace(b"t=0 0\n", b"t=0 0\nb=AS:64\nz=foo\n")
    sdp = parse_sdp(data)
    assert sdp.media[0].formats == ["0", "96"]
    assert parse_sdp(b"v=0\r\no=- 1 1 IN IP4 h\r\n").media == []


def test_non_utf8_session_name() -> None:
    sdp = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 h\r\ns=caf\xe9\r\n")
    assert sdp.session_name == "café"


def test_multicast_connection_ttl_stripped() -> None:
    sdp = parse_sdp(b"v=0\r\no=- 1 1 IN IP4 h\r\nc=IN IP4 224.2.1.1/127\r\n")
    assert sdp.connection == "224.2.1.1"


def test_media_description_codec_name() -> None:
    media = MediaDescription("audio", 1, "RTP/AVP", ["0", "96", "x"])
    assert media.codec_name("0") == ("PCMU", 8000, None)
    assert media.codec_name("96") is None
    assert media.codec_name("x") is None
