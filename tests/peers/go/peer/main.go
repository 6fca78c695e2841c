// Test peer: one program built on Go's crypto/tls (standard library only;
// TLS 1.3 is negotiated unless -max-version 1.2), run as a client or an
// echo server (-mode client|server). Either way it handles -conns
// connections one after another and prints one JSON line per connection on
// stdout with what crypto/tls saw (ConnectionState: version, suite, ALPN,
// resumption, peer certificates, exporter values, the error if any).
//
// This file holds what both modes share: the flags that mean the same in
// both, curve and exporter parsing, certificate loading and the common
// part of the JSON line. client.go and server.go hold each mode's own.
package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// common is the part of a connection's JSON line both modes print.
type common struct {
	Version      string   `json:"version,omitempty"`
	Suite        string   `json:"suite,omitempty"`
	ALPN         string   `json:"alpn"`
	DidResume    bool     `json:"did_resume"`
	PeerCerts    []string `json:"peer_certs"`
	Verified     int      `json:"verified_chains"`
	Exporters    []string `json:"exporters,omitempty"`
	Error        string   `json:"error,omitempty"`
	HandshakeErr bool     `json:"handshake_error,omitempty"`
}

// options are the flags that mean the same in both modes.
type options struct {
	certFile, keyFile string
	curves            []tls.CurveID
	alpn              []string
	exports           []exportSpec
	conns             int
	timeout           time.Duration
}

func fail(args ...interface{}) {
	fmt.Fprintln(os.Stderr, args...)
	os.Exit(2)
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
			fail("unknown curve", name)
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
			fail("bad -export item", item)
		}
		var ctx []byte
		if parts[1] != "-" {
			var err error
			if ctx, err = hex.DecodeString(parts[1]); err != nil {
				fail("bad -export context", err)
			}
		}
		n, err := strconv.Atoi(parts[2])
		if err != nil {
			fail("bad -export length", err)
		}
		out = append(out, exportSpec{parts[0], ctx, n})
	}
	return out
}

func readPool(file string) *x509.CertPool {
	pem, err := os.ReadFile(file)
	if err != nil {
		fail(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fail("no certificates in", file)
	}
	return pool
}

func loadPair(certFile, keyFile string) tls.Certificate {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		fail(err)
	}
	return cert
}

// baseConfig applies the shared options to a new tls.Config.
func baseConfig(o *options, maxVersion string) *tls.Config {
	cfg := &tls.Config{CurvePreferences: o.curves, NextProtos: o.alpn}
	if maxVersion == "1.2" {
		// A TLS 1.2-only peer: our side must refuse it cleanly.
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	}
	return cfg
}

// handshake sets the connection's deadline and runs the handshake. On
// success it fills the common fields and returns the state; on failure it
// records the error and returns false.
func handshake(conn *tls.Conn, timeout time.Duration, res *common, specs []exportSpec) (tls.ConnectionState, bool) {
	res.PeerCerts = []string{}
	conn.SetDeadline(time.Now().Add(timeout))
	if err := conn.Handshake(); err != nil {
		res.Error = err.Error()
		res.HandshakeErr = true
		return tls.ConnectionState{}, false
	}
	st := conn.ConnectionState()
	describe(st, res, specs)
	return st, true
}

// describe fills the common fields from a completed handshake.
func describe(st tls.ConnectionState, res *common, specs []exportSpec) {
	res.Version = fmt.Sprintf("%#04x", st.Version)
	res.Suite = tls.CipherSuiteName(st.CipherSuite)
	res.ALPN = st.NegotiatedProtocol
	res.DidResume = st.DidResume
	for _, c := range st.PeerCertificates {
		res.PeerCerts = append(res.PeerCerts, c.Subject.CommonName)
	}
	res.Verified = len(st.VerifiedChains)
	for _, s := range specs {
		v, err := st.ExportKeyingMaterial(s.label, s.context, s.n)
		if err != nil {
			res.Exporters = append(res.Exporters, "error: "+err.Error())
		} else {
			res.Exporters = append(res.Exporters, hex.EncodeToString(v))
		}
	}
}

func main() {
	mode := flag.String("mode", "", "client|server")
	certFile := flag.String("cert", "", "certificate chain (PEM): the server's, or the client's own")
	keyFile := flag.String("key", "", "private key (PEM) for -cert")
	curveList := flag.String("curves", "", "CurvePreferences, e.g. x25519,P-256")
	alpn := flag.String("alpn", "", "comma-separated ALPN protocols")
	exports := flag.String("export", "", "label:hexcontext|-:length;... exporter values to print")
	conns := flag.Int("conns", 1, "connections, one after another (a client's share a session cache)")
	maxVersion := flag.String("max-version", "", "1.2: a TLS 1.2-only peer (default: crypto/tls defaults, TLS 1.3 preferred)")
	timeout := flag.Duration("timeout", 20*time.Second, "deadline per connection")
	cf := clientFlags()
	sf := serverFlags()
	flag.Parse()

	o := &options{
		certFile: *certFile, keyFile: *keyFile, curves: curves(*curveList),
		exports: parseExports(*exports), conns: *conns, timeout: *timeout,
	}
	if *alpn != "" {
		o.alpn = strings.Split(*alpn, ",")
	}
	cfg := baseConfig(o, *maxVersion)
	switch *mode {
	case "client":
		runClient(o, cf, cfg)
	case "server":
		runServer(o, sf, cfg)
	default:
		fail("-mode must be client or server, not", *mode)
	}
}
