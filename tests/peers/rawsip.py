"""Hand-written SIP over a real UDP socket, for tests of bad and unusual input."""

from __future__ import annotations

import asyncio
import os
import socket

from callbox.server.sip.message import SipResponse, parse_message

SDP_PCMU = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 0\r\n"
)
SDP_G729 = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
    "m=audio 40000 RTP/AVP 18 3\r\na=rtpmap:18 G729/8000\r\na=rtpmap:3 GSM/8000\r\n"
)


class RawSip:
    """A UDP socket that sends hand-written SIP and collects what comes back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def request(self, method: str, target: str, *, body: str = "", call_id: str | None = None,
                extra: str = "", omit: tuple[str, ...] = (), length: int | None = None,
                to_tag: str = "", cseq_method: str | None = None) -> bytes:
        call_id = call_id or os.urandom(6).hex()
        headers = {
            "Via": f"SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{os.urandom(6).hex()};rport",
            "From": f"<sip:raw@127.0.0.1:{self.port}>;tag={os.urandom(3).hex()}",
            "To": f"<{target}>{';tag=' + to_tag if to_tag else ''}",
            "Call-ID": call_id,
            "CSeq": f"1 {cseq_method or method}",
            "Contact": f"<sip:raw@127.0.0.1:{self.port}>",
            "Max-Forwards": "70",
        }
        if body:
            headers["Content-Type"] = "application/sdp"
        headers["Content-Length"] = str(len(body) if length is None else length)
        lines = [f"{method} {target} SIP/2.0"]
        lines += [f"{k}: {v}" for k, v in headers.items() if k not in omit]
        text = "\r\n".join(lines) + "\r\n" + extra + "\r\n" + body
        return text.encode()

    async def send(self, data: bytes, port: int) -> None:
        await asyncio.get_running_loop().sock_sendto(self.sock, data, ("127.0.0.1", port))

    async def datagram(self, timeout: float = 3.0) -> bytes:
        loop = asyncio.get_running_loop()
        return await asyncio.wait_for(loop.sock_recv(self.sock, 65535), timeout)

    async def final(self, timeout: float = 3.0) -> SipResponse | None:
        """The first final (>= 200) response, or None if nothing final arrives in time."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                data = await asyncio.wait_for(loop.sock_recv(self.sock, 65535), left)
            except TimeoutError:
                return None
            message = parse_message(data)
            if isinstance(message, SipResponse) and message.status >= 200:
                return message
        return None
