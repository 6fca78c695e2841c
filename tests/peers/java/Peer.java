// A JSSE (Java's TLS stack) peer for tests/test_interop_java.py.
//
//   java Peer client key=value... [; key=value...]...   one connection per group
//   java Peer server key=value...                       accepts count=N connections
//
// Options (client: per connection, the first group's values are inherited;
// server: global):
//   cert=PEM key=PEM   our certificate chain and PKCS#8 key (client: used only with
//                      auth=1); server: comma lists, JSSE picks by the client's
//                      signature_algorithms
//   ca=PEM             trusted CAs (absent: trust nothing)
//   host= port=        where to connect (client)
//   sni=NAME           server_name to send and verify (client, default localhost;
//                      "-": none, the certificate is checked against host)
//   verify=0           client: skip the host name check (chain is still checked)
//   suites=A,B         enabled cipher suites
//   alpn=A,B           ALPN protocols (offered / accepted)
//   send=N             client: send N pattern bytes (byte i = (i*7+3)&0xff) and
//                      expect them echoed
//   keyupdate=K        client: K x startHandshake() (a KeyUpdate on TLS 1.3)
//                      after half of the data; server: K times after the first read
//   fresh=1            client: new SSLContext (empty session cache) for this connection
//   revocation=1       client: check revocation (OCSP, from a stapled response)
//   auth=1             client: offer our certificate
//   clientauth=need|want|none   server
//   count=N            server: connections to serve
//
// Each connection prints one line:  RESULT n=<i> ok=1 key=value...  or
// RESULT n=<i> ok=0 err=<exception text>. A server prints "PORT <n>" when listening.
import java.io.*;
import java.net.*;
import java.nio.charset.StandardCharsets;
import java.nio.file.*;
import java.security.*;
import java.security.cert.*;
import java.security.spec.PKCS8EncodedKeySpec;
import java.util.*;
import javax.net.ssl.*;

public class Peer {
    static final char[] PW = "peer".toCharArray();

    static Map<String, String> parse(List<String> args, Map<String, String> base) {
        Map<String, String> m = new HashMap<>(base);
        for (String a : args) {
            int i = a.indexOf('=');
            if (i < 0) throw new IllegalArgumentException("bad option " + a);
            m.put(a.substring(0, i), a.substring(i + 1));
        }
        return m;
    }

    static List<X509Certificate> readCerts(String path) throws Exception {
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        List<X509Certificate> out = new ArrayList<>();
        try (InputStream in = new FileInputStream(path)) {
            for (java.security.cert.Certificate c : cf.generateCertificates(in)) out.add((X509Certificate) c);
        }
        return out;
    }

    static PrivateKey readKey(String path) throws Exception {
        String pem = Files.readString(Path.of(path), StandardCharsets.US_ASCII);
        String b64 = pem.replaceAll("-----[A-Z ]+-----", "").replaceAll("\\s", "");
        byte[] der = Base64.getDecoder().decode(b64);
        for (String alg : new String[] {"EC", "RSA", "Ed25519", "RSASSA-PSS"}) {
            try {
                return KeyFactory.getInstance(alg).generatePrivate(new PKCS8EncodedKeySpec(der));
            } catch (Exception e) {
                // try the next algorithm
            }
        }
        throw new IllegalArgumentException("unsupported key in " + path);
    }

    static SSLContext context(Map<String, String> o, boolean withCert) throws Exception {
        KeyManager[] kms = null;
        if (withCert && o.containsKey("cert")) {
            KeyStore ks = KeyStore.getInstance("PKCS12");
            ks.load(null, null);
            String[] certs = o.get("cert").split(","), keys = o.get("key").split(",");
            for (int i = 0; i < certs.length; i++) {
                List<X509Certificate> chain = readCerts(certs[i]);
                ks.setKeyEntry("me" + i, readKey(keys[i]), PW, chain.toArray(new X509Certificate[0]));
            }
            KeyManagerFactory kmf = KeyManagerFactory.getInstance("PKIX");
            kmf.init(ks, PW);
            kms = kmf.getKeyManagers();
        }
        KeyStore ts = KeyStore.getInstance("PKCS12");
        ts.load(null, null);
        if (o.containsKey("ca")) {
            int i = 0;
            for (X509Certificate c : readCerts(o.get("ca"))) ts.setCertificateEntry("ca" + i++, c);
        }
        TrustManagerFactory tmf = TrustManagerFactory.getInstance("PKIX");
        if ("1".equals(o.get("revocation"))) {
            // Revocation checked, from the stapled OCSP response only (no responder to ask).
            PKIXBuilderParameters pb = new PKIXBuilderParameters(ts, new X509CertSelector());
            pb.setRevocationEnabled(true);
            tmf.init(new CertPathTrustManagerParameters(pb));
        } else {
            tmf.init(ts);
        }
        SSLContext ctx = SSLContext.getInstance("TLSv1.3");
        ctx.init(kms, tmf.getTrustManagers(), null);
        return ctx;
    }

    static byte[] pattern(int n) {
        byte[] b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte) (i * 7 + 3);
        return b;
    }

    static String hex(byte[] b) {
        StringBuilder sb = new StringBuilder();
        for (byte x : b) sb.append(String.format("%02x", x));
        return sb.toString();
    }

    static String describe(SSLSocket s) {
        SSLSession ss = s.getSession();
        StringBuilder sb = new StringBuilder();
        sb.append(" proto=").append(ss.getProtocol());
        sb.append(" suite=").append(ss.getCipherSuite());
        String ap = s.getApplicationProtocol();
        sb.append(" alpn=").append(ap == null || ap.isEmpty() ? "-" : ap);
        sb.append(" created=").append(ss.getCreationTime());
        sb.append(" id=").append(hex(ss.getId()));
        try {
            X509Certificate peer = (X509Certificate) ss.getPeerCertificates()[0];
            sb.append(" peer=").append(peer.getSubjectX500Principal().getName().replace(' ', '_'));
            sb.append(" peerchain=").append(ss.getPeerCertificates().length);
        } catch (SSLPeerUnverifiedException e) {
            sb.append(" peer=-");
        }
        if (ss instanceof ExtendedSSLSession) {
            List<SNIServerName> names = ((ExtendedSSLSession) ss).getRequestedServerNames();
            for (SNIServerName n : names) {
                if (n instanceof SNIHostName) sb.append(" sni=").append(((SNIHostName) n).getAsciiName());
            }
            String[] algs = ((ExtendedSSLSession) ss).getPeerSupportedSignatureAlgorithms();
            sb.append(" peersigalgs=").append(String.join(",", algs));
        }
        return sb.toString();
    }

    static void configure(SSLSocket s, Map<String, String> o) {
        s.setEnabledProtocols(new String[] {"TLSv1.3"});
        SSLParameters p = s.getSSLParameters();
        if (o.containsKey("suites")) p.setCipherSuites(o.get("suites").split(","));
        if (o.containsKey("alpn")) p.setApplicationProtocols(o.get("alpn").split(","));
        s.setSSLParameters(p);
    }

    static String err(Throwable e) {
        StringBuilder sb = new StringBuilder();
        for (Throwable t = e; t != null; t = t.getCause()) {
            if (sb.length() > 0) sb.append(" | ");
            sb.append(t.getClass().getSimpleName()).append(": ").append(t.getMessage());
        }
        return sb.toString().replace('\n', ' ');
    }

    // ------------------------------------------------------------- client
    static void client(List<List<String>> groups) throws Exception {
        Map<String, String> base = parse(groups.get(0), Map.of());
        SSLContext shared = null, sharedAuth = null;
        for (int n = 0; n < groups.size(); n++) {
            Map<String, String> o = n == 0 ? base : parse(groups.get(n), base);
            boolean auth = "1".equals(o.get("auth"));
            SSLContext ctx;
            if ("1".equals(o.get("fresh")) || (auth ? sharedAuth : shared) == null) {
                ctx = context(o, auth);
                if (auth) sharedAuth = ctx; else shared = ctx;
            } else {
                ctx = auth ? sharedAuth : shared;
            }
            StringBuilder line = new StringBuilder("RESULT n=" + n);
            String sni = o.getOrDefault("sni", "localhost");
            boolean noSni = sni.equals("-");
            int port = Integer.parseInt(o.get("port"));
            // Layered on a plain socket so that the peer host JSSE checks the
            // certificate against (and caches sessions under) is the SNI name.
            Socket plain = new Socket(o.get("host"), port);
            try (SSLSocket s = (SSLSocket) ctx.getSocketFactory().createSocket(plain, noSni ? o.get("host") : sni, port, true)) {
                s.setSoTimeout(15000);
                configure(s, o);
                SSLParameters p = s.getSSLParameters();
                p.setServerNames(noSni ? List.of() : List.of(new SNIHostName(sni)));
                if (!"0".equals(o.get("verify"))) p.setEndpointIdentificationAlgorithm("HTTPS");
                s.setSSLParameters(p);
                s.startHandshake();
                int size = Integer.parseInt(o.getOrDefault("send", "0"));
                int ku = Integer.parseInt(o.getOrDefault("keyupdate", "0"));
                byte[] data = pattern(size);
                OutputStream out = s.getOutputStream();
                InputStream in = s.getInputStream();
                final int idx = n;
                Thread writer = new Thread(() -> {
                    try {
                        out.write(data, 0, size / 2);
                        for (int k = 0; k < ku; k++) s.startHandshake();
                        out.write(data, size / 2, size - size / 2);
                        out.flush();
                    } catch (IOException e) {
                        System.out.println("WRITER n=" + idx + " err=" + err(e));
                    }
                });
                writer.start();
                byte[] back = new byte[size];
                int got = 0;
                while (got < size) {
                    int r = in.read(back, got, size - got);
                    if (r < 0) break;
                    got += r;
                }
                writer.join(15000);
                line.append(" ok=1").append(describe(s));
                line.append(" echoed=").append(got == size && Arrays.equals(back, data) ? "ok" : "bad:" + got);
                line.append(" keyupdates=").append(ku);
            } catch (Exception e) {
                line.append(" ok=0 err=").append(err(e));
            }
            System.out.println(line);
            System.out.flush();
        }
    }

    // ------------------------------------------------------------- server
    static void server(Map<String, String> o) throws Exception {
        SSLContext ctx = context(o, true);
        int count = Integer.parseInt(o.getOrDefault("count", "1"));
        int ku = Integer.parseInt(o.getOrDefault("keyupdate", "0"));
        try (SSLServerSocket ls = (SSLServerSocket) ctx.getServerSocketFactory().createServerSocket(0, 50, InetAddress.getByName("127.0.0.1"))) {
            System.out.println("PORT " + ls.getLocalPort());
            System.out.flush();
            ls.setSoTimeout(30000);
            for (int n = 0; n < count; n++) {
                StringBuilder line = new StringBuilder("RESULT n=" + n);
                try (SSLSocket s = (SSLSocket) ls.accept()) {
                    s.setSoTimeout(15000);
                    configure(s, o);
                    String ca = o.getOrDefault("clientauth", "none");
                    if (ca.equals("need")) s.setNeedClientAuth(true);
                    if (ca.equals("want")) s.setWantClientAuth(true);
                    s.startHandshake();
                    InputStream in = s.getInputStream();
                    OutputStream out = s.getOutputStream();
                    byte[] buf = new byte[65536];
                    long total = 0;
                    boolean first = true;
                    int r;
                    while ((r = in.read(buf)) > 0) {
                        out.write(buf, 0, r);
                        total += r;
                        if (first) {
                            first = false;
                            for (int k = 0; k < ku; k++) s.startHandshake();
                        }
                    }
                    out.flush();
                    line.append(" ok=1").append(describe(s)).append(" bytes=").append(total);
                } catch (Exception e) {
                    line.append(" ok=0 err=").append(err(e));
                }
                System.out.println(line);
                System.out.flush();
            }
        }
    }

    public static void main(String[] argv) throws Exception {
        List<List<String>> groups = new ArrayList<>();
        groups.add(new ArrayList<>());
        for (int i = 1; i < argv.length; i++) {
            if (argv[i].equals(";")) groups.add(new ArrayList<>());
            else groups.get(groups.size() - 1).add(argv[i]);
        }
        if (argv[0].equals("client")) client(groups);
        else server(parse(groups.get(0), Map.of()));
    }
}
