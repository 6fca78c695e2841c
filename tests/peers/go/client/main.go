// Test peer: a TLS client built on Go's crypto/tls (standard library only;
// TLS 1.3 is negotiated unless -max-version 1.2). It makes -conns
// connections one after another (sharing one ClientSessionCache, so later
// ones can resume), sends -size bytes of a fixed pattern (byte i is
// i % 251) while reading the echo back, then half-closes with close_notify,
// reads until the server closes and checks the echo byte for byte. It
// prints one JSON line per connection on stdout with what crypto/tls saw.
package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

type result struct {
	Version      string   `json:"version,omitempty"`
	Suite        string   `json:"suite,omitempty"`
	ALPN         string   `json:"alpn"`
	DidResume    bool     `json:"did_resume"`
	PeerCerts    []string `json:"peer_certs"`
	Verified     int      `json:"verified_chains"`
	Exporters    []string `json:"exporters,omitempty"`
	OCSP         string   `json:"ocsp"`
	Sent         int      `json:"sent"`
	Received     int      `json:"received"`
	EchoOK       bool     `json:"echo_ok"`
	Error        string   `json:"error,omitempty"`
	HandshakeErr bool     `json:"handshake_error,omitempty"`
}

func curves(list string) []tls.CurveID {
	var out []tls.CurveID
	for _, name := range strings.Split(list, ",") {
		switch strings.TrimSpace(name) {
		case "":
		case "x25519", "X25519":
			out = append(out, tls.X25519)
		case "P-256", "secp256r1":
			out = append(out, tls.CurveP256)
		case "P-384", "secp384r1":
			out = append(out, tls.CurveP384)
		case "P-521", "secp521r1":
			out = append(out, tls.CurveP521)
		default:
			fmt.Fprintln(os.Stderr, "unknown curve", name)
			os.Exit(2)
		}
	}
	return out
}

type exportSpec struct {
	label   string
	context []byte
	n       int
}

// parseExports reads "label:hexcontext:length;..." ("-" as context: none).
func parseExports(spec string) []exportSpec {
	var out []exportSpec
	for _, item := range strings.Split(spec, ";") {
		if item == "" {
			continue
		}
		parts := strings.Split(item, ":")
		if len(parts) != 3 {
			fmt.Fprintln(os.Stderr, "bad -export item", item)
			os.Exit(2)
		}
		var ctx []byte
		if parts[1] != "-" {
			var err error
			if ctx, err = hex.DecodeString(parts[1]); err != nil {
				fmt.Fprintln(os.Stderr, "bad -export context", err)
				os.Exit(2)
			}
		}
		n, err := strconv.Atoi(parts[2])
		if err != nil {
			fmt.Fprintln(os.Stderr, "bad -export length", err)
			os.Exit(2)
		}
		out = append(out, exportSpec{parts[0], ctx, n})
	}
	return out
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

func main() {
	addr := flag.String("addr", "", "host:port")
	sni := flag.String("sni", "localhost", "ServerName (SNI and the name verified)")
	caFile := flag.String("ca", "", "CA file (RootCAs)")
	insecure := flag.Bool("insecure", false, "InsecureSkipVerify")
	certFile := flag.String("cert", "", "client certificate (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	curveList := flag.String("curves", "", "CurvePreferences, e.g. x25519,P-256")
	alpn := flag.String("alpn", "", "comma-separated ALPN protocols")
	exports := flag.String("export", "", "label:hexcontext|-:length;... exporter values to print")
	conns := flag.Int("conns", 1, "connections, one after another, sharing a session cache")
	size := flag.Int("size", 0, "bytes to send and expect echoed")
	maxVersion := flag.String("max-version", "", "1.2: a TLS 1.2-only peer (default: crypto/tls defaults, TLS 1.3 preferred)")
	timeout := flag.Duration("timeout", 20*time.Second, "deadline per connection")
	flag.Parse()

	cfg := &tls.Config{
		ServerName:         *sni,
		CurvePreferences:   curves(*curveList),
		InsecureSkipVerify: *insecure,
		ClientSessionCache: tls.NewLRUClientSessionCache(8),
	}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		cfg.RootCAs = x509.NewCertPool()
		cfg.RootCAs.AppendCertsFromPEM(pem)
	}
	if *certFile != "" {
		cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if *maxVersion == "1.2" {
		// A TLS 1.2-only peer: our side must refuse it cleanly.
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	}
	if *alpn != "" {
		cfg.NextProtos = strings.Split(*alpn, ",")
	}
	specs := parseExports(*exports)
	data := pattern(*size)
	enc := json.NewEncoder(os.Stdout)
	failed := false
	for i := 0; i < *conns; i++ {
		res := run(*addr, cfg, specs, data, *timeout)
		enc.Encode(res)
		if res.Error != "" || !res.EchoOK {
			failed = true
		}
	}
	if failed {
		os.Exit(1)
	}
}

func run(addr string, cfg *tls.Config, specs []exportSpec, data []byte, timeout time.Duration) (res result) {
	res.PeerCerts = []string{}
	raw, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		res.Error = err.Error()
		return
	}
	conn := tls.Client(raw, cfg)
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	if err := conn.Handshake(); err != nil {
		res.Error = err.Error()
		res.HandshakeErr = true
		return
	}
	st := conn.ConnectionState()
	res.Version = fmt.Sprintf("%#04x", st.Version)
	res.Suite = tls.CipherSuiteName(st.CipherSuite)
	res.ALPN = st.NegotiatedProtocol
	res.DidResume = st.DidResume
	for _, c := range st.PeerCertificates {
		res.PeerCerts = append(res.PeerCerts, c.Subject.CommonName)
	}
	res.Verified = len(st.VerifiedChains)
	res.OCSP = hex.EncodeToString(st.OCSPResponse)
	for _, s := range specs {
		v, err := st.ExportKeyingMaterial(s.label, s.context, s.n)
		if err != nil {
			res.Exporters = append(res.Exporters, "error: "+err.Error())
		} else {
			res.Exporters = append(res.Exporters, hex.EncodeToString(v))
		}
	}
	// Write and read concurrently so that neither side's buffers fill up.
	// close_notify only goes out once the whole echo is back: a KeyUpdate
	// the server sends mid-stream is then answered (Go cannot answer one
	// after its close_notify).
	werr := make(chan error, 1)
	go func() {
		n, err := conn.Write(data)
		res.Sent = n
		werr <- err
	}()
	got := make([]byte, len(data))
	n, rerr := io.ReadFull(conn, got)
	got = got[:n]
	if err := <-werr; err != nil {
		res.Error = "write: " + err.Error()
		return
	}
	if rerr != nil {
		res.Error = "read: " + rerr.Error()
		return
	}
	if err := conn.CloseWrite(); err != nil {
		res.Error = "close: " + err.Error()
		return
	}
	// Nothing more may come before the server's close_notify.
	rest, rerr := io.ReadAll(conn)
	got = append(got, rest...)
	res.Received = len(got)
	res.EchoOK = bytes.Equal(got, data)
	if rerr != nil {
		res.Error = "read: " + rerr.Error()
	}
	return
}
