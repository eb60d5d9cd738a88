"""errapp.py DST PORT: connected UDP client; reports what recv() gives (data, error or timeout)."""
import socket, sys, time
dst, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM); s.connect((dst, port)); s.settimeout(3)
t = time.time(); s.send(b"ping")
try: print("app recv:", s.recv(100))
except socket.timeout: print(f"app: timeout after {time.time()-t:.1f}s")
except OSError as e: print(f"app: {e!r} after {time.time()-t:.3f}s")
