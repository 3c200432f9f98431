package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/sirupsen/logrus"
	"golang.org/x/sys/unix"

	"github.com/dmthin/dmthin/thinpool"
)

// Exit statuses.
const (
	exitOK         = 0
	exitProblems   = 1 // check found problems; gc left some
	exitError      = 2 // bad input, or a failure
	exitIncomplete = 3 // check could not read every view
)

// env is where a command reads and writes: the process's files, or a
// test's buffers.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	// tty reports whether a stream is a terminal: progress goes to
	// stderr only when it is one, and gc asks for confirmation only on
	// one.
	tty func(any) bool
}

func stdio() env {
	return env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, tty: isTerminal}
}

func isTerminal(f any) bool {
	file, ok := f.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(file.Fd()), unix.TCGETS)
	return err == nil
}

// usageError is bad input: the message is printed with a hint to -h.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

// exitCode lets a command choose its exit status with an error that is
// not a failure (check's findings).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

type command struct {
	name, args, help string
	run              func(ctx context.Context, c *cmdCtx) error
	flags            func(fs *flag.FlagSet, c *cmdCtx)
}

var commands = []command{
	{name: "status", help: "pool space, mode, low-water mark, devices, background deletions, faulty devices", run: runStatus},
	{name: "ls", help: "every device: layer, thin id, size, mapped bytes, state, active, mounts", run: runLs},
	{name: "tree", help: "the snapshot chains, parent to child", run: runTree},
	{name: "check", help: "compare the records with the kernel's devices and the pool's thin ids", run: runCheck},
	{name: "gc", args: "[--yes] [--discard]", help: "remove what check finds orphaned (engine stopped)", run: runGC, flags: gcFlags},
	{name: "du", args: "LAYER...", help: "exclusive and shared bytes of layers or devices (thin_ls)", run: runDu},
	{name: "grow", args: "[--data SIZE] [--metadata SIZE]", help: "grow a loopback pool's files, or reload a pool over grown devices (engine stopped)", run: runGrow, flags: growFlags},
}

// cmdCtx is a command's parsed flags and environment.
type cmdCtx struct {
	env
	root    string
	json    bool
	verbose bool
	args    []string
	log     logrus.FieldLogger

	// gc
	yes, discard bool
	// grow
	dataSize, metaSize string
}

func mainUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: dmthin COMMAND --root DIR [--json] [ARGS]\n\n")
	for _, c := range commands {
		fmt.Fprintf(w, "  %-7s %s\n", c.name, c.help)
	}
	fmt.Fprintf(w, "\nDIR is a graph driver's home or a containerd snapshotter's root_path (or a pool's own root).\n")
	fmt.Fprintf(w, "status, ls, tree, check and du work while the engine runs; gc and grow need it stopped.\n")
	fmt.Fprintf(w, "dmthin COMMAND -h describes a command's flags.\n")
}

// run runs one command line and returns the exit status.
func run(ctx context.Context, args []string, e env) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		mainUsage(e.stderr)
		if len(args) == 0 {
			return exitError
		}
		return exitOK
	}
	var cmd *command
	for i := range commands {
		if commands[i].name == args[0] {
			cmd = &commands[i]
		}
	}
	if cmd == nil {
		fmt.Fprintf(e.stderr, "dmthin: unknown command %q\n\n", args[0])
		mainUsage(e.stderr)
		return exitError
	}
	c := &cmdCtx{env: e}
	fs := flag.NewFlagSet("dmthin "+cmd.name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.StringVar(&c.root, "root", os.Getenv("DMTHIN_ROOT"), "graph driver home, snapshotter root_path, or pool root (default $DMTHIN_ROOT)")
	fs.BoolVar(&c.json, "json", false, "print JSON")
	fs.BoolVar(&c.verbose, "v", false, "log the library's messages to stderr")
	if cmd.flags != nil {
		cmd.flags(fs, c)
	}
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "usage: dmthin %s --root DIR [--json] %s\n  %s\n\n", cmd.name, cmd.args, cmd.help)
		fs.PrintDefaults()
	}
	if err := fs.Parse(interleave(args[1:], fs)); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitError
	}
	c.args = fs.Args()
	l := logrus.New()
	l.SetOutput(e.stderr)
	l.SetLevel(logrus.ErrorLevel)
	if c.verbose {
		l.SetLevel(logrus.DebugLevel)
	}
	c.log = l
	err := cmd.run(ctx, c)
	var code exitCode
	var uerr usageError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &code):
		return int(code)
	case errors.As(err, &uerr):
		fmt.Fprintf(e.stderr, "dmthin %s: %s (see dmthin %s -h)\n", cmd.name, uerr.msg, cmd.name)
		return exitError
	default:
		fmt.Fprintf(e.stderr, "dmthin %s: %v\n", cmd.name, err)
		return exitError
	}
}

// interleave moves flags after positional arguments in front of them, so
// that "du LAYER --json" works as "du --json LAYER".
func interleave(args []string, fs *flag.FlagSet) []string {
	var flags, pos []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			pos = append(pos, args[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		flags = append(flags, a)
		name := strings.TrimLeft(a, "-")
		if strings.Contains(name, "=") {
			continue
		}
		if f := fs.Lookup(name); f != nil {
			if bf, ok := f.Value.(interface{ IsBoolFlag() bool }); ok && bf.IsBoolFlag() {
				continue
			}
			if i+1 < len(args) {
				flags = append(flags, args[i+1])
				i++
			}
		}
	}
	return append(flags, append([]string{"--"}, pos...)...)
}

// poolRoot finds the pool under dir: dir itself (a graph driver's home, or
// a pool's root) or dir/pool (a containerd snapshotter's root_path).
func poolRoot(dir string) (string, error) {
	if dir == "" {
		return "", usagef("--root is required (or set DMTHIN_ROOT)")
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return "", usagef("--root %s: %v", dir, errors.Unwrap(err))
	}
	if !fi.IsDir() {
		return "", usagef("--root %s is not a directory", dir)
	}
	for _, cand := range []string{dir, filepath.Join(dir, "pool")} {
		if _, err := os.Stat(filepath.Join(cand, "metadata.db")); err == nil {
			return cand, nil
		}
	}
	return "", usagef("--root %s holds no dmthin pool (no metadata.db in it or in its pool/ directory)", dir)
}

// inspect starts an inspector of the pool under --root.
func (c *cmdCtx) inspect() (*thinpool.Inspector, error) {
	root, err := poolRoot(c.root)
	if err != nil {
		return nil, err
	}
	in, err := thinpool.Inspect(thinpool.InspectOptions{Root: root, Logger: c.log})
	if err != nil {
		return nil, err
	}
	return in, nil
}

// noArgs refuses positional arguments for commands that take none.
func (c *cmdCtx) noArgs() error {
	if len(c.args) > 0 {
		return usagef("unexpected argument %q", c.args[0])
	}
	return nil
}

func (c *cmdCtx) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
