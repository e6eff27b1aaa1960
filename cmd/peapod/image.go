package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"peapod/image"
	"peapod/rootless"
)

// importInNode runs this import again inside the running rootless node
// recorded under state: joined to its user and mount namespaces, where the
// image store's ids are the node's.
func importInNode(state, file, root, logLevel string) error {
	holder, err := rootless.RunningHolder(state)
	if err != nil {
		return fmt.Errorf("image import: %w: the image store belongs to its namespaces", err)
	}
	abs, err := filepath.Abs(file)
	if err != nil {
		return err
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		return fmt.Errorf("image import: nsenter (util-linux) is needed to enter the rootless node: %w", err)
	}
	return syscall.Exec(nsenter, []string{"nsenter", "--target", strconv.Itoa(holder), "--user", "--mount", "--",
		exe, "image", "import", abs, "--root", root, "--log-level", logLevel}, os.Environ())
}

// imageStoreDir is where an instance keeps its images, under its --root.
func imageStoreDir(root string) string { return filepath.Join(root, "images") }

const imageUsage = `Usage:
  peapod image import FILE [--root DIR]   import an OCI layout or docker-save archive (.tar, .tar.gz)

Run by an ordinary user, it imports into the running rootless instance
(--state names it; default $XDG_RUNTIME_DIR/peapod), inside its namespaces.
`

// imageCommand runs `peapod image ...`. It works beside a running daemon
// with the same root: the store is shared safely between processes.
func imageCommand(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(os.Stderr, imageUsage)
		if len(args) == 0 {
			return fmt.Errorf("image: missing subcommand")
		}
		return nil
	}
	switch args[0] {
	case "import":
		return imageImport(args[1:])
	default:
		fmt.Fprint(os.Stderr, imageUsage)
		return fmt.Errorf("image: unknown subcommand %q", args[0])
	}
}

func imageImport(args []string) error {
	defaults, err := defaultConfig()
	if err != nil {
		return err
	}
	fs := flag.NewFlagSet("peapod image import", flag.ContinueOnError)
	root := fs.String("root", defaults.Root, "persistent state directory of the peapod instance")
	state := fs.String("state", defaults.State, "runtime state directory of the instance (rootless: where its namespaces are recorded)")
	logLevel := fs.String("log-level", "warn", "debug, info, warn or error")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), imageUsage)
		fs.PrintDefaults()
	}
	// Flags may come before or after FILE.
	var files []string
	for {
		if err := fs.Parse(args); err != nil {
			return err
		}
		if fs.NArg() == 0 {
			break
		}
		files = append(files, fs.Arg(0))
		args = fs.Args()[1:]
	}
	if len(files) != 1 {
		fs.Usage()
		return fmt.Errorf("image import: want exactly one FILE, got %d", len(files))
	}
	if !filepath.IsAbs(*root) {
		return fmt.Errorf("root %q must be an absolute path", *root)
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("log level %q: use debug, info, warn or error", *logLevel)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	if rootless.Detect() == rootless.Parent {
		// The store's files belong to the rootless node's ids: import
		// from inside its namespaces, as its daemon would.
		return importInNode(*state, files[0], *root, *logLevel)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	store, err := image.Open(image.Config{Root: imageStoreDir(*root), Log: log})
	if err != nil {
		return err
	}
	defer store.Close()
	imgs, err := store.Import(ctx, files[0], os.Stdout)
	if err != nil {
		return err
	}
	for _, img := range imgs {
		names := strings.Join(append(img.RepoTags, img.RepoDigests...), " ")
		if names == "" {
			names = "(no name)"
		}
		fmt.Printf("%s %s\n", img.ID, names)
	}
	return nil
}
