// Test peer: a TLS echo server built on Go's crypto/tls (standard library
// only; TLS 1.3 is negotiated unless -max-version 1.2). It accepts -conns
// connections one after another, echoes what each client sends until the
// client closes, and prints one JSON line per connection on stdout with
// what crypto/tls saw (version, suite, ALPN, SNI, resumption, peer
// certificates, exporter values, the error if any). The first stdout line
// is "listening <port>".
package main

import (
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
	SNI          string   `json:"sni"`
	DidResume    bool     `json:"did_resume"`
	PeerCerts    []string `json:"peer_certs"`
	Verified     int      `json:"verified_chains"`
	Exporters    []string `json:"exporters,omitempty"`
	Received     int64    `json:"received"`
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

// exporters parses "label:hexcontext:length;..." ("-" as context means none).
type exportSpec struct {
	label   string
	context []byte
	n       int
}

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

func readPool(file string) *x509.CertPool {
	pem, err := os.ReadFile(file)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		fmt.Fprintln(os.Stderr, "no certificates in", file)
		os.Exit(2)
	}
	return pool
}

func main() {
	certFile := flag.String("cert", "", "server certificate chain (PEM)")
	keyFile := flag.String("key", "", "server private key (PEM)")
	clientCA := flag.String("client-ca", "", "CA file for client certificates")
	clientAuth := flag.String("client-auth", "none", "none|request|verify-if-given|require")
	curveList := flag.String("curves", "", "CurvePreferences, e.g. x25519,P-256")
	alpn := flag.String("alpn", "", "comma-separated ALPN protocols")
	noTickets := flag.Bool("no-tickets", false, "SessionTicketsDisabled")
	exports := flag.String("export", "", "label:hexcontext|-:length;... exporter values to print")
	conns := flag.Int("conns", 1, "connections to serve, one after another")
	ocspFile := flag.String("ocsp", "", "DER OCSP response to staple")
	maxVersion := flag.String("max-version", "", "1.2: a TLS 1.2-only peer (default: crypto/tls defaults, TLS 1.3 preferred)")
	timeout := flag.Duration("timeout", 20*time.Second, "deadline per connection")
	flag.Parse()

	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if *ocspFile != "" {
		if cert.OCSPStaple, err = os.ReadFile(*ocspFile); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
	}
	cfg := &tls.Config{
		Certificates:           []tls.Certificate{cert},
		CurvePreferences:       curves(*curveList),
		SessionTicketsDisabled: *noTickets,
	}
	if *maxVersion == "1.2" {
		// A TLS 1.2-only peer: our side must refuse it cleanly.
		cfg.MinVersion, cfg.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	}
	if *alpn != "" {
		cfg.NextProtos = strings.Split(*alpn, ",")
	}
	if *clientCA != "" {
		cfg.ClientCAs = readPool(*clientCA)
	}
	switch *clientAuth {
	case "none":
		cfg.ClientAuth = tls.NoClientCert
	case "request":
		cfg.ClientAuth = tls.RequestClientCert
	case "verify-if-given":
		cfg.ClientAuth = tls.VerifyClientCertIfGiven
	case "require":
		cfg.ClientAuth = tls.RequireAndVerifyClientCert
	default:
		fmt.Fprintln(os.Stderr, "bad -client-auth", *clientAuth)
		os.Exit(2)
	}
	specs := parseExports(*exports)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	fmt.Printf("listening %d\n", ln.Addr().(*net.TCPAddr).Port)
	enc := json.NewEncoder(os.Stdout)
	for i := 0; i < *conns; i++ {
		raw, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		enc.Encode(serve(tls.Server(raw, cfg), specs, *timeout))
	}
}

func serve(conn *tls.Conn, specs []exportSpec, timeout time.Duration) (res result) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(timeout))
	res.PeerCerts = []string{}
	if err := conn.Handshake(); err != nil {
		res.Error = err.Error()
		res.HandshakeErr = true
		return
	}
	describe(conn, &res, specs)
	// Echo until the client closes (close_notify or EOF). A TLS 1.3 client
	// certificate is only checked when its Certificate arrives, after the
	// server's Handshake() returned: errors show up here.
	n, err := io.Copy(conn, conn)
	res.Received = n
	if err != nil {
		res.Error = err.Error()
		return
	}
	// Our Close sends close_notify.
	return
}

func describe(conn *tls.Conn, res *result, specs []exportSpec) {
	st := conn.ConnectionState()
	res.Version = fmt.Sprintf("%#04x", st.Version)
	res.Suite = tls.CipherSuiteName(st.CipherSuite)
	res.ALPN = st.NegotiatedProtocol
	res.SNI = st.ServerName
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
