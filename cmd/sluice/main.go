// Command sluice is the one binary of the Sluice relay: the daemon (serve),
// its development mode (serve --dev) and the operator's tools (check-config,
// passwd, dkim, queue, policy, upstreams, trace, send, sendmail, version). It is
// the only place that reads configuration files and wires packages together.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/sluicemail/sluice/signing"
)

// Set by the linker (-X main.version=…, -X main.commit=…).
var (
	version = "dev"
	commit  = ""
)

const defaultConfig = "/etc/sluice/sluice.yaml"

// errUsage makes main exit 2 after the usage was printed.
var errUsage = errors.New("usage")

// exitError carries an exit code other than 1.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

type command struct {
	name, args, help string
	run              func(args []string, stdin io.Reader, stdout, stderr io.Writer) error
}

func commands() []command {
	return []command{
		{"serve", "[-c FILE] [--dev]", "run the relay", runServe},
		{"check-config", "[-c FILE]", "validate the configuration and print a summary", runCheckConfig},
		{"passwd", "[--bcrypt]", "read a password, print its hash for the config", runPasswd},
		{"dkim", "keygen|dns|rotate|activate|status ...", "make, rotate and check DKIM keys, print their DNS records", runDKIM},
		{"queue", "list|show|retry|hold|release|delete|flush|import ...", "inspect and act on the queue", runQueue},
		{"policy", "explain --user U --from A --to B [--to C ...] [--size N] [-c FILE]", "show what the policy decides, and each recipient's route", runPolicy},
		{"doctor", "[-c FILE] [--domain D] [--json]", "check DKIM, SPF, DMARC and every upstream", runDoctor},
		{"upstreams", "[-c FILE | --state-dir DIR] [--json]", "show each upstream's state", runUpstreams},
		{"trace", "QUERY [--since 24h] [--json] [-c FILE]", "what happened to a message (the journal)", runTrace},
		{"suppression", "list|add|remove|check ...", "show and edit the suppression list", runSuppression},
		{"send", "--server H:P [--user U [--password P]] --from A --to B [--data FILE|-]", "send a test message", runSend},
		{"sendmail", "[-f FROM] [-t] [RCPT...]", "sendmail-compatible injector", runSendmail},
		{"version", "", "print version information", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: sluice COMMAND [flags]   (sluice COMMAND --help: the command's usage)\n\ncommands:")
	for _, c := range commands() {
		if len(c.args) > 48 {
			fmt.Fprintf(w, "  %-13s %s\n  %-13s %-48s %s\n", c.name, c.args, "", "", c.help)
			continue
		}
		fmt.Fprintf(w, "  %-13s %-48s %s\n", c.name, c.args, c.help)
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		// A usage asked for (-h, --help) goes to stdout, with exit 0.
		help := wantsHelp(c.name, args[1:])
		cmdErr := stderr
		if help {
			cmdErr = stdout
		}
		err := c.run(args[1:], stdin, stdout, cmdErr)
		var ee *exitError
		switch {
		case err == nil:
			return 0
		case errors.Is(err, errUsage) && help:
			return 0
		case errors.Is(err, errUsage):
			return 2
		case errors.As(err, &ee):
			if ee.msg != "" {
				fmt.Fprintln(stderr, ee.msg)
			}
			return ee.code
		}
		fmt.Fprintln(stderr, "sluice "+c.name+":", err)
		return 1
	}
	fmt.Fprintf(stderr, "sluice: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

// wantsHelp reports whether args ask for the command's usage: -h, -help or
// --help before any "--" (for sendmail, whose -h takes a hop count, only the
// long forms).
func wantsHelp(cmd string, args []string) bool {
	for _, a := range args {
		switch {
		case a == "--":
			return false
		case a == "--help" || a == "-help" || a == "-h" && cmd != "sendmail":
			return true
		}
	}
	return false
}

// parseFlags parses flags that may stand before or after the positional
// arguments (`queue show ID -c FILE` and `queue -c FILE show ID` both work).
func parseFlags(fs *flag.FlagSet, args []string) ([]string, error) {
	fs.SetOutput(io.Discard)
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// newFlags is a command's flag set with -c, the configuration file.
func newFlags(name string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	return fs, fs.String("c", defaultConfig, "configuration file")
}

func usageErr(stderr io.Writer, format string, a ...any) error {
	fmt.Fprintf(stderr, format+"\n", a...)
	return errUsage
}

func runVersion(args []string, _ io.Reader, stdout, _ io.Writer) error {
	c := commit
	if c == "" {
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					c = s.Value
				}
			}
		}
	}
	if c == "" {
		c = "unknown"
	}
	fmt.Fprintf(stdout, "sluice %s (commit %s, %s %s/%s)\n", version, c, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	fmt.Fprintf(stdout, "dkim rsa signer: %s\n", signing.RSAImplementation())
	return nil
}
