"""An app with a tiny accept queue, for listen-overflow tests: listens on [::]:PORT with a tiny backlog
(an optional pause before each accept), a thread per accepted connection. Under concurrent clients
the queue overflows: handshake ACKs are dropped and, with SYN cookies, the ACKs that follow go
through the listener path. Per connection: reads a request up to the blank line (or a line), then
replies "<peer ip> <peer port>\n" (HTTP when it was asked in HTTP) and closes.
Prints "ready" once listening. Runs until killed.
  backlog_app.py PORT [BACKLOG (1)] [ACCEPT_PAUSE_S (0)]
"""
import socket
import sys
import threading
import time


def handle(c, addr):
    with c:
        c.settimeout(5)
        host = addr[0][7:] if addr[0].startswith("::ffff:") else addr[0]
        body = f"{host} {addr[1]}\n".encode()
        req = b""
        try:
            while b"\n" not in req or (req.startswith(b"GET") and b"\r\n\r\n" not in req):
                b = c.recv(4096)
                if not b:
                    break
                req += b
            if req.startswith(b"GET"):
                body = b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            c.sendall(body)
        except OSError:
            pass


def main():
    port = int(sys.argv[1])
    backlog = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    pause = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(backlog)
    print("ready", flush=True)
    while True:
        if pause:
            time.sleep(pause)
        c, addr = s.accept()
        threading.Thread(target=handle, args=(c, addr), daemon=True).start()

if __name__ == "__main__":
    main()
