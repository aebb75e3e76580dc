/*
 * The EICAR anti-malware test file: harmless, and detected by every scanner on purpose,
 * so a download of it proves the whole path (reassembly, hashing, scan, cache, block).
 *
 * Definition (eicar.org): the file starts with the 68-character string below and may be
 * followed only by whitespace (space, tab, LF, CR, Ctrl-Z), 128 bytes in all at most.
 * A larger file that merely contains the string is not the test file, and is not flagged.
 */

rule EICAR_Test_File
{
    meta:
        description = "EICAR anti-malware test file (not malware)"
        reference = "https://www.eicar.org/download-anti-malware-testfile/"
        severity = "test"

    strings:
        // One backslash in the file; YARA text strings escape it.
        $eicar = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"

    condition:
        $eicar at 0 and filesize <= 128 and
        (
            filesize == 68 or
            for all i in (68 .. filesize - 1) : (
                uint8(i) == 0x20 or uint8(i) == 0x09 or uint8(i) == 0x0a or
                uint8(i) == 0x0d or uint8(i) == 0x1a
            )
        )
}
