package main

import (
	"os"
	"path/filepath"
	"strings"

	"peapod/internal/mountinfo"
)

// journallessExt4 tells whether dir lives on an ext4 that runs without a
// journal, and on which device. There, to allocate an inode, the kernel
// skips every free one deleted in the last seconds or minutes
// (recently_deleted in fs/ext4/ialloc.c; a journal turns the check off),
// and pod churn slows every file peapod then makes (README, "Benchmarks").
// mounts is /proc/self/mountinfo; journals lists /proc/fs/jbd2, whose
// entries are <device>-<inode of the journal>; devName names the block
// device of a "major:minor" as the kernel does ("" if unknown): the mount's
// source may be an alias such as /dev/root.
func journallessExt4(dir string, mounts []byte, journals []string, devName func(majMin string) string) (device string, ok bool) {
	dir = filepath.Clean(dir)
	var best mountinfo.Mount
	for _, m := range mountinfo.Parse(mounts) {
		mp := m.MountPoint
		under := mp == "/" || dir == mp || strings.HasPrefix(dir, mp+"/")
		if under && len(mp) >= len(best.MountPoint) {
			best = m
		}
	}
	if best.FSType != "ext4" {
		return "", false
	}
	dev := devName(best.MajMin)
	if dev == "" {
		return "", false
	}
	for _, j := range journals {
		if strings.HasPrefix(j, dev+"-") {
			return "", false
		}
	}
	return best.Source, true
}

// journalNotes are the notes of check (and warnings of serve) for the dirs
// peapod writes its records and pods' files to, when they are on an ext4
// without a journal.
func journalNotes(dirs ...string) []string {
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var journals []string
	if ents, err := os.ReadDir("/proc/fs/jbd2"); err == nil {
		for _, e := range ents {
			journals = append(journals, e.Name())
		}
	}
	// /sys/dev/block/<major>:<minor> links to the device's sysfs dir,
	// named as /proc/fs/jbd2 names it.
	devName := func(majMin string) string {
		p, err := filepath.EvalSymlinks("/sys/dev/block/" + majMin)
		if err != nil {
			return ""
		}
		return filepath.Base(p)
	}
	var notes []string
	for _, d := range dirs {
		if dev, ok := journallessExt4(d, mounts, journals, devName); ok {
			notes = append(notes, d+" is on an ext4 without a journal ("+dev+"): after pods are removed, creating files there slows down for minutes, and pod starts with it; give it a journal (tune2fs -O has_journal on the unmounted device), or put --state on a tmpfs")
		}
	}
	return notes
}
